"""The wheels carried to the lent GPU machine (scripts/build_wheels.sh, scripts/check_wheels.py): the package
list always, and the produced folder (tags, versions, the 48 MiB limit) when ./wheels exists."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import check_wheels  # noqa: E402  (a script of scripts/, not a package module)

WHEELS = REPO / "wheels"


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


def installed_versions_match_the_pins() -> bool:
    for pin in check_wheels.carried_pins():
        try:
            if metadata.version(pin.name) != pin.version:
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


def test_the_walk_follows_packages_the_device_lacks_and_checks_known_versions(monkeypatch) -> None:
    monkeypatch.setattr(check_wheels, "root_requirements", lambda: [Requirement("alpha>=1"), Requirement("torch")])
    monkeypatch.setattr(check_wheels, "device_packages", lambda: {"torch": "2.11.0", "numpy": None, "rich": None})
    graph = {
        "alpha": ["beta", "numpy>=2", "torch>=2.12", "windows-only; sys_platform == 'win32'"],
        "beta": ["gamma[extra]>=1", "rich"],
        "gamma": ["beta"],  # a cycle
    }
    walk = check_wheels.walk_requirements(graph.get)
    assert walk.carried == {"alpha", "beta", "gamma"}
    assert set(walk.on_device) == {"torch", "numpy", "rich"}
    assert walk.unmet == ["alpha needs torch>=2.12; the device has torch 2.11.0"]
    assert check_wheels.device_requirement_lines(walk) == ["numpy>=2", "rich", "torch==2.11.0"]


def test_the_carried_list_holds_every_package_the_device_lacks() -> None:
    walk = check_wheels.walk_requirements(installed_requires_of_pinned)
    carried = {pin.name for pin in check_wheels.carried_pins()}
    assert walk.carried - carried == set(), "needed on the device, neither there nor in scripts/carried_wheels.txt"
    assert walk.unmet == []


def test_the_carried_list_is_pinned_and_carries_device_packages_only_as_marked_overrides() -> None:
    pins = check_wheels.carried_pins()
    assert all(pin.version for pin in pins), [pin.name for pin in pins if not pin.version]
    assert len({pin.name for pin in pins}) == len(pins)
    device = check_wheels.device_packages()
    overrides = {pin.name for pin in pins if pin.name in device}
    assert overrides == {pin.name for pin in pins if pin.note.startswith("override:")} == {"setuptools"}


@pytest.mark.skipif(
    not installed_versions_match_the_pins(), reason="the installed versions are not the pinned ones: the walk is partial"
)
def test_every_carried_package_is_needed() -> None:
    pins = check_wheels.carried_pins()
    overrides = {pin.name for pin in pins if pin.note.startswith("override:")}
    walk = check_wheels.walk_requirements(installed_requires_of_pinned)
    assert {pin.name for pin in pins} - overrides <= walk.carried, "carried but needed by nothing"


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

    walk = check_wheels.walk_requirements(check_wheels.wheel_requires(WHEELS))
    assert walk.carried - {wheel["name"] for wheel in wheels} == set()
    assert walk.unmet == []
