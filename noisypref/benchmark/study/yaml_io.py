"""Reading a study file: safe YAML where 1e-3 is a number and a repeated key is an error."""

from __future__ import annotations

import io
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml


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
        stream = io.StringIO(text)
        stream.name = str(path)  # YAML's messages then name the file, not "<unicode string>"
        return yaml.load(stream, Loader=_StudyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
