"""Check a folder of wheels for the lent GPU machine against scripts/carried_wheels.txt; print the list and size.

    python3 scripts/check_wheels.py [WHEELS]         # default ./wheels; scripts/build_wheels.sh runs it
    python3 scripts/check_wheels.py --smoke          # the checks on placeholder files, in a scratch folder
    python3 scripts/check_wheels.py --device-requirements [WHEELS]   # what the wheels need of the machine

The machine runs CPython 3.12 on x86-64 Linux (glibc 2.39, Ubuntu 24.04's Python 3.12.3) and can fetch
nothing. A wheel is accepted when one of its tags installs there: interpreter cp312, py312, py3 or
py3x (x ≤ 12); ABI cp312, abi3 or none; platform any, linux_x86_64, manylinux1/2010/2014_x86_64 or
manylinux_2_N_x86_64 with N ≤ 39. The folder must hold exactly one wheel of each carried package, at
its pinned version, and nothing else, in at most ``LIMIT_MIB`` MiB (the working tree that travels to
the machine holds 64 MiB in all). Exit status 0 when all holds, 1 otherwise (each problem printed).
The last line printed is JSON: the wheels, their total size and the limit.

``--device-requirements`` prints, one per line, the machine's packages that noisypref and the carried
wheels require (``NAME==VERSION`` where the machine's version is known, else the requirements' specifiers),
for scripts/device_rehearsal.sh to install; the dependency walk reads the wheels' metadata.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import parse_tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

SCRIPTS = Path(__file__).resolve().parent
CARRIED_LIST = SCRIPTS / "carried_wheels.txt"
DEVICE_LIST = SCRIPTS / "device_packages.txt"
LIMIT_MIB = 48
DEVICE_PYTHON = (3, 12)
DEVICE_GLIBC = (2, 39)
MANYLINUX_ALIASES = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# The device's interpreter, for evaluating requirement markers: CPython 3.12.3 on x86-64 Linux.
DEVICE_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "os_name": "posix", "extra": "",
}  # fmt: skip


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503) name
    version: str | None
    note: str


def read_pins(path: Path) -> list[Pin]:
    """``NAME[==VERSION]  # note`` lines; blank lines and ``#`` comment lines are skipped."""
    pins = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line, _, note = raw.partition("#")
        line = line.strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:==([A-Za-z0-9.+!-]+))?", line)
        if match is None:
            raise ValueError(f"{path}:{number}: {raw!r} is not NAME or NAME==VERSION")
        pins.append(Pin(canonicalize_name(match[1]), match[2], note.strip()))
    return pins


def carried_pins() -> list[Pin]:
    return read_pins(CARRIED_LIST)


def device_packages() -> dict[str, str | None]:
    """Canonical name -> version (None where the device's version is unknown)."""
    return {pin.name: pin.version for pin in read_pins(DEVICE_LIST)}


def root_requirements() -> list[Requirement]:
    """What runs on the device: noisypref's dependencies, TRL (benchmarks/throughput.py), peft (LoRA) and
    the test runner (tests/test_gpu.py), as pyproject.toml states them."""
    import tomllib  # Python 3.11+; the device runs 3.12

    project = tomllib.loads((SCRIPTS.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project["optional-dependencies"]
    roots = project["dependencies"] + optional["bench"] + optional["peft"]
    roots += [requirement for requirement in optional["dev"] if not requirement.startswith("ruff")]
    return [Requirement(text) for text in roots]


@dataclass
class RequirementWalk:
    """Where the roots' requirements lead on the device."""

    carried: set[str] = field(default_factory=set)  # packages the device lacks: they must be carried
    on_device: dict[str, list[Requirement]] = field(default_factory=dict)  # device package -> requirements on it
    unmet: list[str] = field(default_factory=list)  # requirements the device's known versions do not meet


def walk_requirements(requires_of: Callable[[str], list[str] | None]) -> RequirementWalk:
    """Follow the roots' requirements through the packages the device lacks (a device package's own
    requirements are the device's business). ``requires_of(name)`` gives such a package's requirements
    (``Requires-Dist`` strings), or None where they are unknown."""
    device = device_packages()
    walk = RequirementWalk()
    stack = [(requirement, "noisypref") for requirement in root_requirements()]
    while stack:
        requirement, parent = stack.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(DEVICE_MARKERS):
            continue
        name = canonicalize_name(requirement.name)
        if name in device:
            walk.on_device.setdefault(name, []).append(requirement)
            version = device[name]
            if version is not None and not requirement.specifier.contains(Version(version), prereleases=True):
                walk.unmet.append(f"{parent} needs {requirement}; the device has {name} {version}")
            continue
        if name in walk.carried:
            continue
        walk.carried.add(name)
        stack += [(Requirement(child), name) for child in requires_of(name) or []]
    return walk


def wheel_requires(folder: Path) -> Callable[[str], list[str] | None]:
    """``requires_of`` reading the ``Requires-Dist`` lines of the wheels in ``folder``."""
    wheels = {parse_wheel_filename(path.name)[0]: path for path in folder.glob("*.whl")}

    def requires_of(name: str) -> list[str] | None:
        if name not in wheels:
            return None
        with zipfile.ZipFile(wheels[name]) as archive:
            (member,) = [entry for entry in archive.namelist() if entry.endswith(".dist-info/METADATA")]
            headers = Parser().parsestr(archive.read(member).decode("utf-8"), headersonly=True)
        return headers.get_all("Requires-Dist") or []

    return requires_of


def device_requirement_lines(walk: RequirementWalk) -> list[str]:
    """A pip requirement per device package needed: its known version, else the specifiers asked of it."""
    device = device_packages()
    lines = []
    for name in sorted(walk.on_device):
        if device[name] is not None:
            lines.append(f"{name}=={device[name]}")
        else:
            specifiers = sorted({str(spec) for requirement in walk.on_device[name] for spec in requirement.specifier})
            lines.append(name + ",".join(specifiers))
    return lines


def platform_installs_on_device(platform: str) -> bool:
    if platform in ("any", "linux_x86_64"):
        return True
    if platform.removesuffix("_x86_64") in MANYLINUX_ALIASES and platform.endswith("_x86_64"):
        return MANYLINUX_ALIASES[platform.removesuffix("_x86_64")] <= DEVICE_GLIBC
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform)
    return match is not None and (int(match[1]), int(match[2])) <= DEVICE_GLIBC


def interpreter_runs_on_device(interpreter: str) -> bool:
    major, minor = DEVICE_PYTHON
    if interpreter in (f"cp{major}{minor}", f"py{major}{minor}", f"py{major}"):
        return True
    match = re.fullmatch(rf"(?:py|cp){major}(\d+)", interpreter)
    # pyXY for an older minor version runs too; a cpXY wheel only where its ABI is abi3 or none
    return match is not None and int(match[1]) <= minor and interpreter.startswith("py")


def tag_installs_on_device(tag_text: str) -> bool:
    """Whether any tag of the (compressed) tag set ``interpreter-abi-platform`` fits the device."""
    major, minor = DEVICE_PYTHON
    for tag in parse_tag(tag_text):
        abi_fits = tag.abi in (f"cp{major}{minor}", "abi3", "none")
        abi3_interpreter = tag.abi == "abi3" and re.fullmatch(r"cp3(\d+)", tag.interpreter) is not None
        interpreter_fits = interpreter_runs_on_device(tag.interpreter) or (
            abi3_interpreter and int(tag.interpreter[3:]) <= minor
        )
        if abi_fits and interpreter_fits and platform_installs_on_device(tag.platform):
            return True
    return False


def check_folder(folder: Path, pins: list[Pin], limit_mib: float = LIMIT_MIB) -> tuple[list[dict], list[str]]:
    """The folder's wheels (name, version, file, MiB) and the problems found."""
    problems, wheels = [], []
    expected = {pin.name: pin.version for pin in pins}
    seen: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".whl":
            problems.append(f"{path.name}: not a wheel (the folder must hold the carried wheels only)")
            continue
        name, version, _, tags = parse_wheel_filename(path.name)
        size_mib = path.stat().st_size / 2**20
        wheels.append({"name": name, "version": str(version), "file": path.name, "mib": size_mib})
        seen.setdefault(name, []).append(path.name)
        if not any(tag_installs_on_device(str(tag)) for tag in tags):
            problems.append(f"{path.name}: no tag installs on CPython {DEVICE_PYTHON[0]}.{DEVICE_PYTHON[1]}, "
                            f"x86-64 Linux with glibc {DEVICE_GLIBC[0]}.{DEVICE_GLIBC[1]} ({sorted(map(str, tags))})")  # fmt: skip
        if name not in expected:
            problems.append(f"{path.name}: {name} is not in {CARRIED_LIST.name}")
        elif expected[name] is not None and str(version) != expected[name]:
            problems.append(f"{path.name}: version {version}, {CARRIED_LIST.name} pins {expected[name]}")
    for name, files in seen.items():
        if len(files) > 1:
            problems.append(f"{name}: {len(files)} wheels ({', '.join(files)}); two versions stop the install")
    problems += [f"{name}: no wheel (pinned in {CARRIED_LIST.name})" for name in expected if name not in seen]
    total = sum(wheel["mib"] for wheel in wheels)
    if total > limit_mib:
        problems.append(f"the wheels take {total:.1f} MiB, more than the {limit_mib} MiB allowed")
    return wheels, problems


def placeholder_folder(folder: Path, pins: list[Pin]) -> None:
    """One small file per carried package, named as a py3-none-any wheel of its pinned version."""
    for pin in pins:
        (folder / f"{pin.name.replace('-', '_')}-{pin.version or '0'}-py3-none-any.whl").write_bytes(b"0" * 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", nargs="?", type=Path, default=Path("wheels"))
    parser.add_argument("--smoke", action="store_true", help="check placeholder files in a scratch folder")
    parser.add_argument(
        "--device-requirements", action="store_true", help="print the machine's packages the wheels require"
    )
    args = parser.parse_args()
    if args.device_requirements:
        walk = walk_requirements(wheel_requires(args.wheels))
        print("\n".join(device_requirement_lines(walk)))
        return 0
    pins = carried_pins()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.wheels
        if args.smoke:
            folder = Path(scratch)
            placeholder_folder(folder, pins)
        if not folder.is_dir():
            print(f"{folder}: no such folder (scripts/build_wheels.sh makes it)", file=sys.stderr)
            return 1
        wheels, problems = check_folder(folder, pins)
    for wheel in wheels:
        print(f"{wheel['mib']:8.2f} MiB  {wheel['file']}")
    total = sum(wheel["mib"] for wheel in wheels)
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {folder} (limit {LIMIT_MIB} MiB)")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(json.dumps({"wheels": len(wheels), "total_mib": total, "limit_mib": LIMIT_MIB, "problems": len(problems),
                      "files": [wheel["file"] for wheel in wheels]}))  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
