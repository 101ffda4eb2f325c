"""The serving process's configuration: one typed object from the Deployment spec to the server.

The spec's blocks (``batching``, ``limits``, ``capture``) are the spec models themselves
(``kiln.api.deployment``), so their defaults are defined once, there. ``ServeConfig`` crosses the
process boundary as JSON: kiln.bento.server writes ``model_dump(mode="json")`` to the file named
by ``KILN_SERVE_CONFIG`` and the serving process validates it back with this same model
(:meth:`ServeConfig.from_env`)::

    {"deployment": "d", "model": "m", "version": 3, "threads": 1, "workers": 1, "gpu": 0,
     "public": false, "token_file": ".../tokens.json", "access_log": true, "inline": null,
     "batching": {"enabled": true, "maxBatchSize": 32, "maxLatencyMs": 10},
     "limits": {"maxPayloadBytes": 10485760, "maxInstances": 64, "timeoutSeconds": 30,
                "maxConcurrency": 256},
     "capture": {"dir": "...", "sampleRate": 0.1, "maxPerDay": 1000, "queueSize": 256} | null}

Light on purpose (pydantic and the spec models only): the controller builds this object in every
``kiln step deployment.*`` process, which must not pay for BentoML, numpy or the model runtimes.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kiln.api.deployment import Batching, Capture, Limits

__all__ = ["ServeConfig", "ServeLimits", "ServeCapture"]


class ServeLimits(Limits):
    """The spec's limits, plus what only the serving layer sets."""

    maxConcurrency: int = Field(256, ge=1, description="requests in flight before 503")


class ServeCapture(BaseModel):
    """The spec's ``capture`` as the server needs it: where to write, not which dataset reads it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    dir: str | None = None  # None: kiln.bento.server fills in the deployment's default folder
    sampleRate: float = Field(..., gt=0, le=1)
    maxPerDay: int = Field(Capture.model_fields["maxPerDay"].default, ge=1)
    queueSize: int = Field(256, ge=1)


class ServeConfig(BaseModel):
    """Which model version a server runs and how. Built by the controller from the typed spec
    (``kiln.controller.deployment_steps.serve_config``) or by hand (tests, benches: dicts for the
    blocks are validated into the same models)."""

    # defer_build: validated in deployment steps only; importing it must stay cheap
    model_config = ConfigDict(extra="forbid", defer_build=True)

    deployment: str = "kiln"
    workspace: str = "default"   # with ``deployment``: whose tokens the server accepts
    model: str = ""
    version: int = 0
    threads: int = 1
    workers: int = 1
    gpu: int = Field(0, ge=0, description="GPUs the deployment asks for: >0 serves on one when present")
    public: bool = False
    token_file: str | None = None
    # a config made by hand serves unbatched; a Deployment's spec default (batching on) comes
    # with the spec's Batching object
    batching: Batching = Field(default_factory=lambda: Batching(enabled=False))
    limits: ServeLimits = Field(default_factory=ServeLimits)
    capture: ServeCapture | None = None
    access_log: bool = True
    inline: bool | None = None  # run the model on the event loop (None: decided by the framework)

    @property
    def tag(self) -> str:
        return f"{self.model}:v{self.version}"

    @classmethod
    def from_env(cls) -> ServeConfig | None:
        p = os.environ.get("KILN_SERVE_CONFIG")
        if not p:
            return None
        return cls.model_validate_json(Path(p).read_bytes())
