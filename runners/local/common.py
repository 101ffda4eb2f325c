"""Names every part of the local runner shares: node phases, template kinds, the host images it
maps, Argo's name hash and duration syntax. Pure functions and constants; no I/O here."""

from __future__ import annotations

import functools
import re
from typing import Any

from kiln.errors import WorkflowError

DONE = {"Succeeded", "Failed", "Error", "Skipped", "Omitted"}
FAILED = {"Failed", "Error"}

# image (without registry/tag) -> how a step with that image runs on the host
HOST_IMAGES: dict[str, str] = {
    "busybox": "host tools", "alpine": "host tools", "bash": "host tools", "ubuntu": "host tools",
    "debian": "host tools", "python": "host python", "argoproj/argosay": "argosay shim",
}

# how template kinds are run; anything else is reported with this list
TEMPLATE_KINDS = ("container", "script", "containerSet", "http", "suspend", "steps", "dag")
UNSUPPORTED_KINDS = ("resource", "data", "plugin")
# the kinds that run as one pod (host processes)
POD_KINDS = frozenset(("container", "script", "containerSet"))
# the status node type of each template kind
NODE_TYPES = {"container": "Pod", "script": "Pod", "containerSet": "Pod", "http": "HTTP", "suspend": "Suspend", "steps": "Steps", "dag": "DAG"}


@functools.lru_cache(maxsize=8192)  # a node's id and its pod name hash the same name
def fnv32a(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def parse_duration(value: Any, field: str = "duration") -> float:
    """Seconds from an Argo duration: ``"10"``, ``10``, ``"1m30s"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise WorkflowError(f"invalid {field} {value!r}", hint="use seconds or a duration like 30s, 5m, 1h")
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in parts)


def image_base(image: str) -> str:
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


class Stopped(Exception):
    """Raised inside a run once a stop was requested; the node it reaches ends Failed."""
