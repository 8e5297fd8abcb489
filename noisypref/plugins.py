"""Methods and noise models from outside the package: plugin modules and entry points.

A study's ``plugins: [my_lab.losses]`` names modules to import before the study is checked; a
module registers what it defines (``@noisypref.methods.register``,
``@noisypref.noise_injection.register_noise_model(...)``) when imported. The modules are looked up in the installed
packages (and PYTHONPATH) first, then in the folder of the study file, then in any folder given
with ``noisypref run --plugin-path``: a ``my_losses.py`` beside ``study.yaml`` imports as ``my_losses``.
Spawned worker processes inherit the search path. Installed packages can instead declare entry
points in the groups ``noisypref.methods`` and ``noisypref.noise_models``; those are imported with
the first plugin load of a process. Every worker process imports the same modules before its runs.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUPS = ("noisypref.methods", "noisypref.noise_models")

_entry_points_loaded = False
_plugin_folders: list[str] = []  # added to sys.path by add_plugin_folders, in order


class PluginError(ImportError):
    """A plugin module or entry point that could not be imported; the message says which and why."""


def add_plugin_folders(folders: Iterable[str | Path]) -> list[str]:
    """Append each folder to the import path (after the installed packages, which thus win a clash
    of names); returns the folders searched this way."""
    for folder in folders:
        resolved = str(Path(folder).resolve())
        if resolved not in sys.path:
            sys.path.append(resolved)
        if resolved not in _plugin_folders:
            _plugin_folders.append(resolved)
    return list(_plugin_folders)


def import_plugins(modules: Iterable[str] = ()) -> None:
    """Import the installed entry points (once per process) and each named module (idempotent)."""
    _import_entry_points()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # a plugin's own bug is reported as the plugin's
            searched = ""
            if isinstance(error, ModuleNotFoundError) and error.name == name.split(".")[0]:
                searched = "; searched the installed packages, PYTHONPATH" + "".join(
                    f", {folder}" for folder in _plugin_folders
                )
            raise PluginError(f"importing {name!r} failed: {type(error).__name__}: {error}{searched}") from error


def _import_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group in ENTRY_POINT_GROUPS:
        for entry_point in metadata.entry_points(group=group):
            try:
                entry_point.load()
            except Exception as error:
                raise PluginError(
                    f"entry point {entry_point.name!r} ({entry_point.value}) of group {group!r} failed to load: "
                    f"{type(error).__name__}: {error}"
                ) from error
            logger.info("loaded plugin entry point %s = %s", entry_point.name, entry_point.value)
