"""Atomic writes and build-once caches shared by the engine, the evaluator and the run layer.

A file written here is either absent or complete: it is written to a temporary file in the same
folder, flushed to disk and renamed over the target (``os.replace`` is atomic on POSIX). A cached
file is built under an exclusive ``fcntl.flock`` on ``<file>.lock``, so concurrent processes build it
once and the others load it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success, fsync it and rename it to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        temporary.chmod(0o644)  # mkstemp makes it private; caches and results may be shared
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n")


def torch_save_atomic(path: Path, value: Any) -> None:
    with atomic_path(path) as temporary:
        torch.save(value, temporary)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``<path>.lock`` for the duration of the block."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def cached_torch_file(path: Path, build: Callable[[], T], description: str) -> T:
    """Load ``path`` (a ``torch.save`` file of plain values) or build, save and return it, once.

    ``build`` runs at most once across concurrent processes; the others wait for the lock and load.
    """
    if path.exists():
        logger.info("%s: cache hit %s", description, path)
        return torch.load(path, weights_only=True)
    with exclusive_lock(path):
        if path.exists():  # built by another process while we waited for the lock
            logger.info("%s: cache hit %s (built concurrently)", description, path)
            return torch.load(path, weights_only=True)
        logger.info("%s: cache miss, computing %s", description, path)
        value = build()
        torch_save_atomic(path, value)
        return value
