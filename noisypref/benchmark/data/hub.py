"""Hub look-ups that fail fast without a network.

The hub libraries retry an unreachable hub for tens of seconds per file (printing "Retrying in 8s"
each time) before they fall back to their local cache. Every noisypref look-up of a hub id (a
dataset, a model, AlpacaEval's files) runs inside ``hub_lookup(what, hub_id)``: when
``HF_HUB_OFFLINE`` is set, or the hub's host cannot be reached (tried once per process, for
``PROBE_TIMEOUT_S`` seconds), the libraries are switched to their offline mode, so the look-up reads
the local cache only, and a miss raises ``HubUnavailable``: one message naming the id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

_reachable: bool | None = None  # the probe's answer, once per process


class HubUnavailable(ValueError):
    """A hub id that is not in the local cache while the hub cannot be reached."""


def offline_requested() -> bool:
    """Whether the environment asks for offline mode (``HF_HUB_OFFLINE=1`` and its older spellings)."""
    import huggingface_hub.constants

    given = any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in OFFLINE_VARIABLES)
    return given or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def hub_reachable() -> bool:
    """Whether a TCP connection to the hub's host opens within ``PROBE_TIMEOUT_S`` (asked once)."""
    global _reachable
    if _reachable is None:
        import huggingface_hub.constants

        endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        try:
            with socket.create_connection((endpoint.hostname, port), timeout=PROBE_TIMEOUT_S):
                _reachable = True
        except OSError as error:
            logger.info("the hub (%s) cannot be reached (%s): reading the local cache only", endpoint.netloc, error)
            _reachable = False
    return _reachable


def use_offline_mode() -> None:
    """Switch huggingface_hub, datasets and transformers to offline mode in this process (and in the
    processes it starts)."""
    import datasets.config
    import huggingface_hub.constants

    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
        datasets.config.HF_DATASETS_OFFLINE = True


def offline_reason() -> str | None:
    """Why look-ups read the local cache only (offline mode is switched on now), or ``None`` when online."""
    if offline_requested():
        reason = "HF_HUB_OFFLINE is set" if _reachable is not False else "the hub cannot be reached"
    elif not hub_reachable():
        reason = "the hub cannot be reached"
    else:
        return None
    use_offline_mode()
    return reason


@contextlib.contextmanager
def hub_lookup(what: str, hub_id: str) -> Iterator[None]:
    """Run a look-up of ``hub_id`` (``what``: "dataset", "model", ...); offline, a failure to find it
    in the local cache raises ``HubUnavailable`` naming the id."""
    reason = offline_reason()
    try:
        yield
    except (OSError, ValueError, RuntimeError) as error:  # ConnectionError and the hub's errors included
        if reason is None or isinstance(error, HubUnavailable):
            raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise HubUnavailable(
            f"{what} {hub_id!r} is not in the local hub cache and {reason}; download it where there is a "
            f"network (it is then cached), or give a local path instead ({type(error).__name__}: {first_line})"
        ) from None


def looks_like_hub_id(name: str) -> bool:
    """A name that is not an existing local path (so the libraries would ask the hub for it)."""
    return not os.path.exists(name)
