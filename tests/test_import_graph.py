"""The arrows between noisypref's modules (issue 25): no import cycle, nothing imports the command line, and
each room imports only the rooms below it (docs/architecture.md, "The arrows").

The imports are read from the source with ``ast``, not by importing. ``from a.b import c`` is an import
of the module ``a.b.c`` when there is one, else of ``a.b`` (as import-linter reads it); the packages
above a module (whose ``__init__`` Python runs first) are not counted, so that a package re-exporting
its modules' names is no cycle. Imports are of three kinds:

- at module level (inside ``try`` or ``if`` too): they run when the module is imported, and a cycle
  among them can fail at import time;
- inside a function: they run when it is called, after every module is loaded, so a cycle through them
  cannot fail an import, but it still ties two rooms together (each needs the other), and counted with
  the module-level ones there must be no cycle either;
- under ``if TYPE_CHECKING:``: they never run (annotations only) and are left out of cycles.

The command line sits on top: no module outside ``noisypref/cli/`` imports ``noisypref.cli``, of any
kind, except ``noisypref/__main__.py``, which is the command line's entry point (``python -m noisypref``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "noisypref"
MODULE_LEVEL, IN_FUNCTION, TYPE_CHECKING_ONLY = "module level", "in a function", "TYPE_CHECKING"
CLI = "noisypref.cli"
CLI_ENTRY_POINTS = {"noisypref.__main__"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    kind: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_module(importer: str, node: ast.ImportFrom, name: str) -> str:
    if node.level:  # relative: from the importer's package, one level up per dot after the first
        package = importer.split(".") if MODULES[importer].name == "__init__.py" else importer.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return f"{base}.{name}" if f"{base}.{name}" in MODULES else base


def imports_of(importer: str) -> list[Import]:
    """The imports of noisypref modules in one module, each with its kind."""
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, IN_FUNCTION if kind == MODULE_LEVEL else kind)
            elif isinstance(child, ast.If) and is_type_checking(child):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), TYPE_CHECKING_ONLY)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), kind)
            elif isinstance(child, ast.Import):
                found.extend(Import(importer, alias.name, kind, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend(
                    Import(importer, imported_module(importer, child, alias.name), kind, child.lineno)
                    for alias in child.names
                )
            else:
                visit(child, kind)

    visit(ast.parse(MODULES[importer].read_text(encoding="utf-8")), MODULE_LEVEL)
    return [item for item in found if item.imported == "noisypref" or item.imported.startswith("noisypref.")]


IMPORTS = [item for importer in MODULES for item in imports_of(importer)]


def import_cycles(imports: list[Import], kinds: set[str]) -> list[list[str]]:
    """The strongly connected components (Tarjan) of more than one module, or of one importing itself,
    in the graph of the imports of these kinds; each sorted."""
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for item in imports:
        if item.kind in kinds and item.imported in MODULES:
            edges[item.importer].add(item.imported)
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in sorted(edges[module]):
            if imported not in index:
                connect(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1 or module in edges[module]:
                components.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            connect(module)
    return components


def describe(component: list[str], kinds: set[str]) -> str:
    """The cycle's modules and the imports between them, each with its file and line."""
    members = set(component)
    arrows = [
        f"  {item.importer} -> {item.imported} ({MODULES[item.importer].relative_to(PACKAGE.parent)}:{item.line}, "
        f"{item.kind})"
        for item in IMPORTS
        if item.kind in kinds and item.importer in members and item.imported in members
    ]
    return "a cycle among " + ", ".join(component) + ":\n" + "\n".join(arrows)


def test_the_walk_finds_the_imports_it_should() -> None:
    """Known arrows of each kind, so that a walk that finds nothing cannot pass the tests below."""
    found = {(item.importer, item.imported, item.kind) for item in IMPORTS}
    assert ("noisypref.benchmark.study.grid", "noisypref.benchmark.study.plan", MODULE_LEVEL) in found
    assert ("noisypref.benchmark.study.folder", "noisypref.benchmark.study.grid", IN_FUNCTION) in found
    assert ("noisypref.benchmark.study", "noisypref.benchmark.study.folder", TYPE_CHECKING_ONLY) in found
    # `from noisypref.methods import dpo` in the package's __init__: the module noisypref.methods.dpo
    assert ("noisypref.methods", "noisypref.methods.dpo", MODULE_LEVEL) in found
    assert ("noisypref.__main__", CLI, MODULE_LEVEL) in found
    assert len(MODULES) > 100 and all(item.importer in MODULES for item in IMPORTS)


def test_the_cycle_search_finds_a_cycle_and_only_of_the_kinds_asked_for() -> None:
    back = Import("noisypref.folder_layout", "noisypref.benchmark.study.plan", IN_FUNCTION, 1)
    cycle = ["noisypref.benchmark.study.plan", "noisypref.folder_layout"]
    assert cycle in import_cycles([*IMPORTS, back], {MODULE_LEVEL, IN_FUNCTION})
    assert cycle not in import_cycles([*IMPORTS, back], {MODULE_LEVEL})
    itself = Import("noisypref.folder_layout", "noisypref.folder_layout", MODULE_LEVEL, 1)
    assert ["noisypref.folder_layout"] in import_cycles([*IMPORTS, itself], {MODULE_LEVEL})


def test_no_import_cycle_among_module_level_imports() -> None:
    cycles = import_cycles(IMPORTS, {MODULE_LEVEL})
    assert not cycles, "\n".join(describe(component, {MODULE_LEVEL}) for component in cycles)


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    kinds = {MODULE_LEVEL, IN_FUNCTION}
    cycles = import_cycles(IMPORTS, kinds)
    assert not cycles, "\n".join(describe(component, kinds) for component in cycles)


def test_nothing_outside_the_command_line_imports_it() -> None:
    upward = [
        f"{MODULES[item.importer].relative_to(PACKAGE.parent)}:{item.line} imports {item.imported} ({item.kind})"
        for item in IMPORTS
        if (item.imported == CLI or item.imported.startswith(CLI + "."))
        and not (item.importer == CLI or item.importer.startswith(CLI + "."))
        and item.importer not in CLI_ENTRY_POINTS
    ]
    assert not upward, (
        "the command line calls the library, never the other way round; pass what the library needs "
        "(a function, a value) in from the command line:\n" + "\n".join(upward)
    )



MAX_MODULE_LINES = 400  # issue 25: a module that grows past this holds two things; split it


def test_no_module_of_the_package_is_over_400_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert len(sizes) > 100 and max(sizes.values()) > 300  # the walk read the package
    over = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split each into the things it holds): {over}"

# The rooms of docs/architecture.md and what each may import ("The arrows"). A room may always import
# its own modules; imports of every kind count, for an import inside a function still ties the rooms.
LEAVES = "leaves"
LEAF_MODULES = {
    "noisypref",  # __version__
    "noisypref.checks",
    "noisypref.settings",
    "noisypref.report_settings",
    "noisypref.folder_layout",
    "noisypref.plugins",
    "noisypref.collectives",
    "noisypref.sampling",
}
ALLOWED_ARROWS = {
    LEAVES: {LEAVES},
    "methods": {LEAVES},
    "noise_injection": {LEAVES},
    "cleaning": {LEAVES, "noise_injection"},
    "reports": {LEAVES},
    "integrations": {LEAVES, "methods"},
    "benchmark": set(),
    "benchmark.storage": {LEAVES},
    "benchmark.progress": {LEAVES, "benchmark.storage"},
    "benchmark.data": {LEAVES},
    "benchmark.testbed": {LEAVES, "benchmark.storage"},
    "benchmark.config": {LEAVES, "methods", "noise_injection", "cleaning", "benchmark.testbed"},
}
# the benchmark's rooms from the engine up: each may import what the one below it may, and that room
ALLOWED_ARROWS["benchmark.engine"] = {
    LEAVES, "methods", "benchmark.storage", "benchmark.progress", "benchmark.data", "benchmark.config"
}  # fmt: skip
ALLOWED_ARROWS["benchmark.evaluation"] = ALLOWED_ARROWS["benchmark.engine"] | {
    "noise_injection", "cleaning", "benchmark.testbed", "benchmark.engine"
}  # fmt: skip
ALLOWED_ARROWS["benchmark.run"] = ALLOWED_ARROWS["benchmark.evaluation"] | {"benchmark.evaluation"}
ALLOWED_ARROWS["benchmark.study"] = ALLOWED_ARROWS["benchmark.run"] | {"benchmark.run"}


def room(module: str) -> str:
    """The room of a module: a leaf, a top-level package, or one of noisypref.benchmark's rooms;
    ``noisypref.__main__`` belongs to the command line, whose entry point it is."""
    if module in LEAF_MODULES:
        return LEAVES
    if module in CLI_ENTRY_POINTS:
        return "cli"
    parts = module.split(".")
    return ".".join(parts[1:3]) if parts[1] == "benchmark" else parts[1]


def test_every_module_belongs_to_a_room_the_arrows_name() -> None:
    rooms = {room(module) for module in MODULES}
    assert rooms == {*ALLOWED_ARROWS, "cli"}, (
        f"rooms without arrows: {sorted(rooms - {*ALLOWED_ARROWS, 'cli'})} (a new leaf goes into LEAF_MODULES, "
        "a new room into ALLOWED_ARROWS and docs/architecture.md)"
    )
    assert room("noisypref.benchmark.evaluation.alpaca_eval.judges") == "benchmark.evaluation"
    assert room("noisypref.methods.margins.exact") == "methods"


def test_each_room_imports_only_the_rooms_below_it() -> None:
    """docs/architecture.md's arrows: leaves import only leaves; methods and noise_injection only leaves;
    reports nothing of the benchmark; each benchmark room only the rooms below it; cli anything."""
    upward = [
        f"{MODULES[item.importer].relative_to(PACKAGE.parent)}:{item.line} ({room(item.importer)}) imports "
        f"{item.imported} ({room(item.imported)}, {item.kind})"
        for item in IMPORTS
        if room(item.importer) != "cli"
        and room(item.imported) != room(item.importer)
        and room(item.imported) not in ALLOWED_ARROWS.get(room(item.importer), set())
    ]
    assert not upward, (
        "an import against the arrows of docs/architecture.md; move the code to the room that may use "
        "it, or change the arrows there and here on purpose:\n" + "\n".join(upward)
    )
