"""The wheels carried to the lent GPU machine (scripts/build_wheels.sh, scripts/check_wheels.py): the package
list always, and the produced folder (tags, versions, the 48 MiB limit) when ./wheels exists."""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import check_wheels  # noqa: E402  (a script of scripts/, not a package module)

WHEELS = REPO / "wheels"
# The device's interpreter, for evaluating requirement markers: CPython 3.12.3 on x86-64 Linux.
DEVICE_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "os_name": "posix", "extra": "",
}  # fmt: skip


def root_requirements() -> list[Requirement]:
    """What runs on the device: noisypref's dependencies, TRL (benchmarks/throughput.py), peft (LoRA) and
    the test runner (tests/test_gpu.py)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project["optional-dependencies"]
    roots = project["dependencies"] + optional["bench"] + optional["peft"]
    roots += [requirement for requirement in optional["dev"] if not requirement.startswith("ruff")]
    return [Requirement(text) for text in roots]


def applies_on_device(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(DEVICE_MARKERS)


def closure(requires_of) -> tuple[set[str], list[str]]:
    """Names the device must get from the wheels (the packages it lacks that the roots need, through
    packages it lacks), and the requirements on device packages of known version that it does not meet.
    ``requires_of(name)`` gives a carried package's requirements, or None where they are unknown."""
    device = check_wheels.device_packages()
    needed, unmet = set(), []
    stack = [(requirement, "noisypref") for requirement in root_requirements()]
    while stack:
        requirement, parent = stack.pop()
        name = canonicalize_name(requirement.name)
        if not applies_on_device(requirement):
            continue
        if name in device:
            version = device[name]
            if version is not None and not requirement.specifier.contains(Version(version), prereleases=True):
                unmet.append(f"{parent} needs {requirement}; the device has {name} {version}")
            continue
        if name in needed:
            continue
        needed.add(name)
        for child in requires_of(name) or []:
            stack.append((Requirement(child), name))
    return needed, unmet


def installed_requires_of_pinned(name: str) -> list[str] | None:
    """The requirements of the installed distribution, when it is the pinned version (else unknown)."""
    pins = {pin.name: pin.version for pin in check_wheels.carried_pins()}
    try:
        distribution = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    if name in pins and pins[name] != distribution.version:
        return None
    return distribution.requires or []


def test_the_carried_list_holds_every_package_the_device_lacks() -> None:
    needed, unmet = closure(installed_requires_of_pinned)
    carried = {pin.name for pin in check_wheels.carried_pins()}
    assert needed - carried == set(), "needed on the device, neither there nor in scripts/carried_wheels.txt"
    assert unmet == []


def test_the_carried_list_is_pinned_and_carries_device_packages_only_as_marked_overrides() -> None:
    pins = check_wheels.carried_pins()
    assert all(pin.version for pin in pins), [pin.name for pin in pins if not pin.version]
    assert len({pin.name for pin in pins}) == len(pins)
    device = check_wheels.device_packages()
    overrides = {pin.name for pin in pins if pin.name in device}
    assert overrides == {pin.name for pin in pins if pin.note.startswith("override:")} == {"setuptools"}
    needed, _ = closure(installed_requires_of_pinned)
    assert {pin.name for pin in pins} - overrides <= needed, "carried but needed by nothing"


def test_the_device_list_holds_what_the_device_is_known_to_have() -> None:
    # KINDS.md's pip list of the machine: these versions were seen there.
    device = check_wheels.device_packages()
    assert device["torch"] == "2.11.0" and device["transformers"] == "5.17.0"
    assert device["huggingface-hub"] == "1.33.0" and device["accelerate"] == "1.15.0"
    assert {"peft", "pandas", "pyarrow", "scipy", "matplotlib", "pytest", "hypothesis", "pyyaml"} <= set(device)
    assert not {"datasets", "trl", "alpaca-eval", "gguf", "pydantic", "openai"} & set(device)


@pytest.mark.parametrize(
    ("tags", "installs"),
    [
        ("cp312-cp312-manylinux_2_17_x86_64", True),
        ("cp312-cp312-manylinux2014_x86_64", True),
        ("cp312-cp312-manylinux_2_39_x86_64", True),
        ("py3-none-any", True),
        ("py312-none-any", True),
        ("py2.py3-none-any", True),
        ("cp39-abi3-manylinux_2_28_x86_64", True),  # the stable ABI of 3.9 and later
        ("cp311-cp311-manylinux_2_17_x86_64", False),  # issue 28: pydantic_core, jiter built for 3.11
        ("py311-none-any", True),
        ("py313-none-any", False),
        ("cp312-cp312-manylinux_2_40_x86_64", False),  # newer glibc than Ubuntu 24.04's 2.39
        ("cp312-cp312-musllinux_1_2_x86_64", False),
        ("cp312-cp312-manylinux_2_17_aarch64", False),
        ("cp312-cp312-macosx_11_0_arm64", False),
    ],
)
def test_which_wheel_tags_install_on_the_device(tags, installs) -> None:
    assert check_wheels.tag_installs_on_device(tags) is installs


def test_check_folder_reports_wrong_tags_versions_duplicates_strays_and_size(tmp_path) -> None:
    pins = [check_wheels.Pin("alpha", "1.0", ""), check_wheels.Pin("beta", "2.0", "")]
    (tmp_path / "alpha-1.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"x" * 2**20)
    (tmp_path / "alpha-1.1-py3-none-any.whl").write_bytes(b"x")
    (tmp_path / "gamma-1.0-py3-none-any.whl").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    wheels, problems = check_wheels.check_folder(tmp_path, pins, limit_mib=0.5)
    assert len(wheels) == 3
    text = "\n".join(problems)
    assert "alpha-1.0-cp311" in text and "no tag installs" in text
    assert "version 1.1, carried_wheels.txt pins 1.0" in text
    assert "alpha: 2 wheels" in text
    assert "gamma is not in carried_wheels.txt" in text
    assert "notes.txt: not a wheel" in text
    assert "beta: no wheel" in text
    assert "more than the 0.5 MiB allowed" in text
    assert len(problems) == 7


def test_wheels_is_ignored_by_git() -> None:
    assert "/wheels/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()


@pytest.mark.skipif(not WHEELS.is_dir(), reason="no ./wheels folder (scripts/build_wheels.sh makes it)")
def test_the_produced_wheels_install_on_the_device_within_the_size_limit() -> None:
    wheels, problems = check_wheels.check_folder(WHEELS, check_wheels.carried_pins())
    assert problems == []
    assert sum(wheel["mib"] for wheel in wheels) <= check_wheels.LIMIT_MIB

    def wheel_requires(name: str) -> list[str]:
        (path,) = [WHEELS / wheel["file"] for wheel in wheels if wheel["name"] == name]
        with zipfile.ZipFile(path) as archive:
            (member,) = [entry for entry in archive.namelist() if entry.endswith(".dist-info/METADATA")]
            headers = Parser().parsestr(archive.read(member).decode("utf-8"), headersonly=True)
        return headers.get_all("Requires-Dist") or []

    needed, unmet = closure(wheel_requires)
    assert needed - {wheel["name"] for wheel in wheels} == set()
    assert unmet == []
