"""Atomic writes, file locks and build-once caches: the one home of each, for every room.

A file written here is either absent or complete: it is written to a temporary file in the same
folder, flushed to disk and renamed over the target (``os.replace`` is atomic on POSIX). A cached
file is built under an exclusive ``fcntl.flock`` on ``<file>.lock``, so concurrent processes build it
once and the others load it. torch is imported only where a torch file is saved or loaded: `noisypref
status` reads run folders and their locks through this module, and imports no torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

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
    import torch

    with atomic_path(path) as temporary:
        torch.save(value, temporary)


def make_files_shareable(folder: Path) -> None:
    """Give every file under ``folder`` the mode of the other outputs (0644): some writers (safetensors)
    create their files private to their owner."""
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)


@contextlib.contextmanager
def file_lock(lock_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` for the block and yield True; with ``wait``
    False, yield False (holding nothing) when another process holds it. The OS releases a lock whose
    holder dies, so a killed process never leaves one behind."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def is_locked(lock_path: Path) -> bool:
    """Whether some process holds ``file_lock(lock_path)`` now."""
    try:
        lock_file = open(lock_path)  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return False
    with lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock ``<path>.lock`` of a file or folder being built, waiting for it."""
    with file_lock(path.with_name(path.name + ".lock")):
        yield


def cached_torch_file(path: Path, build: Callable[[], T], description: str) -> T:
    """Load ``path`` (a ``torch.save`` file of plain values) or build, save and return it, once.

    ``build`` runs at most once across concurrent processes; the others wait for the lock and load.
    """
    import torch

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


def build_once(target_dir: Path, build: Callable[[Path], None]) -> None:
    """Run ``build(staging_dir)`` and rename the staging folder to ``target_dir``, unless it exists;
    under ``exclusive_lock(target_dir)``, so concurrent processes build it once and nobody sees half."""
    if target_dir.exists():
        return
    with exclusive_lock(target_dir):
        if target_dir.exists():  # another process built it while we waited for the lock
            return
        staging_dir = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.tmp-", dir=target_dir.parent))
        staging_dir.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
        try:
            build(staging_dir)
            try:
                os.rename(staging_dir, target_dir)
            except OSError:
                if not target_dir.exists():
                    raise
                logger.info("%s was built concurrently by another process; using it", target_dir)
        finally:
            shutil.rmtree(staging_dir, ignore_errors=True)
