"""Reading a study file: safe YAML where 1e-3 is a number and a repeated key is an error, within
limits that no real study file comes near: its size, how deep lists and mappings nest, and how many
values its aliases expand to (a few hundred bytes of nested aliases can stand for billions of
values). A file past a limit is refused before it is built, with a message naming the file."""

from __future__ import annotations

import io
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

MAX_STUDY_FILE_BYTES = 1_000_000
MAX_NESTING = 50  # lists and mappings inside one another; a study file needs about 6
MAX_VALUES = 100_000  # values (scalars, lists, mappings) once every alias is expanded


class _StudyLoader(yaml.SafeLoader):
    """Safe YAML, plus: 1e-3 is a number (YAML 1.1 reads it as text) and a repeated key is an error."""


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _construct_mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                "found a list or mapping as a key; a key must be a name",
                key_node.start_mark,
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StudyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates
)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_STUDY_FILE_BYTES:
            raise ValueError(
                f"{path} is {size:,} bytes; a study file is at most {MAX_STUDY_FILE_BYTES:,} bytes "
                "(pairs belong in a data file: a dataset of kind 'file')"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such study file: {path}") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not a text file in UTF-8 (byte {error.start} is {error.object[error.start : error.end]!r}); "
            "a study file is YAML text"
        ) from None
    except OSError as error:  # a folder, a file we may not read, ...
        raise ValueError(f"cannot read the study file {path}: {error.strerror}") from None
    try:
        _check_nesting(_stream(text, path), path)
        loader = _StudyLoader(_stream(text, path))  # noqa: S506 (a SafeLoader subclass)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node, path)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None


def _stream(text: str, path: Path) -> io.StringIO:
    stream = io.StringIO(text)
    stream.name = str(path)  # YAML's messages then name the file, not "<unicode string>"
    return stream


def _check_nesting(stream: io.StringIO, path: Path) -> None:
    """Refuse lists and mappings nested deeper than MAX_NESTING, from the parser's events (building
    the nodes recurses once per level, which a few thousand levels overflow)."""
    depth = 0
    for event in yaml.parse(stream, Loader=_StudyLoader):  # noqa: S506 (parsing only, no objects built)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise ValueError(
                    f"{path}, line {event.start_mark.line + 1}: lists and mappings nested more than "
                    f"{MAX_NESTING} levels deep; a study file nests at most {MAX_NESTING}"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Refuse a document whose aliases expand to more than MAX_VALUES values, or that contains itself.

    An alias (*name) is the very node of its anchor (&name), so the sizes are counted once per node
    and added up: the count is that of the expanded document, computed without expanding it."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if children_done:
            in_progress.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_VALUES:
                raise ValueError(
                    f"{path}: its aliases (*name) expand to more than {MAX_VALUES:,} values; a study file "
                    f"holds at most {MAX_VALUES:,} (each alias repeats all that its anchor &name holds)"
                )
            continue
        if key in in_progress:
            raise ValueError(
                f"{path}, line {node.start_mark.line + 1}: an alias (*name) refers to a list or mapping "
                "that contains it; a study file cannot contain itself"
            )
        in_progress.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in in_progress:
                raise ValueError(
                    f"{path}, line {child.start_mark.line + 1}: an alias (*name) refers to a list or mapping "
                    "that contains it; a study file cannot contain itself"
                )
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []
