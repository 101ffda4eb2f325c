"""The BentoML service of a deployment: ``bentoml serve kiln.bento.service:svc``.

Which model version to serve and how (auth, batching, limits, capture) comes from the JSON file
named by ``KILN_SERVE_CONFIG`` (see kiln.bento.config.ServeConfig), written by
kiln.bento.server. The model is a ``bentoml.models.BentoModel`` of the repository's store, so
``bentoml build`` packages it.

Importing this module patches ``Service.to_asgi`` so the ASGI app BentoML's worker serves is
wrapped by :func:`kiln.bento.fastpath.wrap`: ``POST /predict`` and ``/inference`` skip BentoML's
middleware (see that module for why and what it adds back). That is not a supported BentoML
extension point, hence the pin (``bentoml==1.4.39``) and the check below; the ``predict`` API
declared here is BentoML's own route for the same code and serves if the patch is ever lost.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import bentoml
from _bentoml_sdk.service.factory import Service

from kiln.bento import fastpath
from kiln.bento.config import ServeLimits
from kiln.bento.runtime import InstanceError, load_engine

__all__ = ["svc", "KilnService", "BENTOML_VERSION"]

BENTOML_VERSION = "1.4.39"
log = logging.getLogger("kiln.bento.server")
CFG = fastpath.ServeConfig.from_env()

if bentoml.__version__ != BENTOML_VERSION:  # the fast path patches an internal method
    log.warning("kiln's fast path was written for BentoML %s, found %s; check the x-kiln-path header",
                BENTOML_VERSION, bentoml.__version__)

_orig_to_asgi = Service.to_asgi


def _to_asgi(self: Service, is_main: bool = True) -> Any:
    app = _orig_to_asgi(self, is_main)
    return fastpath.wrap(app, CFG) if self is svc else app


Service.to_asgi = _to_asgi  # type: ignore[method-assign]


def _tcp_nodelay() -> None:
    """Set TCP_NODELAY on every accepted connection. BentoML's worker serves a listening socket
    rebuilt from a file descriptor (``socket.socket(fileno=fd)``); asyncio then does not recognise
    accepted connections as TCP and leaves Nagle's algorithm on, so small keep-alive responses
    wait for the client's delayed ACK (the uvicorn ``--workers`` issue #3149)."""
    import socket

    from uvicorn.protocols.http import h11_impl

    protocols = [h11_impl.H11Protocol]
    try:
        from uvicorn.protocols.http import httptools_impl

        protocols.append(httptools_impl.HttpToolsProtocol)
    except ImportError:
        pass
    for proto in protocols:
        orig = proto.connection_made
        if getattr(orig, "_kiln_nodelay", False):
            continue

        def connection_made(self: Any, transport: Any, _orig: Any = orig) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            _orig(self, transport)

        connection_made._kiln_nodelay = True  # type: ignore[attr-defined]
        proto.connection_made = connection_made  # type: ignore[method-assign]


_tcp_nodelay()


def _no_uvicorn_access_log() -> None:
    """Turn off uvicorn's access logger in the worker. BentoML configures the root logger, so
    uvicorn's HTTP protocol finds a handler (``hasHandlers()``) and builds and filters a log
    record for every response, which BentoML's settings then drop: about 70 us of the worker's
    CPU a request (bench/tabular_automl.py: 275 vs 190 us; the same app under plain uvicorn
    with --no-access-log costs what the bare app does). The fast path writes its own access log."""
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False


_no_uvicorn_access_log()


@bentoml.service(
    name="kiln-deployment",
    workers=CFG.workers if CFG else 1,
    traffic={"timeout": float((CFG.limits if CFG else ServeLimits()).timeoutSeconds)},
    logging={"access": {"enabled": False}},  # the fast path writes its own access log
)
class KilnService:
    if CFG is not None and CFG.model:
        model_ref = bentoml.models.BentoModel(CFG.tag)

    def __init__(self) -> None:
        if CFG is None or not CFG.model:
            raise RuntimeError("KILN_SERVE_CONFIG is not set: start deployments with kiln (kiln.bento.server)")
        path = self.model_ref.path
        self.engine = load_engine(path, threads=CFG.threads, name=CFG.model, version=CFG.version, gpu=CFG.gpu > 0)
        fastpath.report_device(self.engine.device)
        self.engine.max_pixels = CFG.limits.maxImagePixels
        fastpath.STATE.engine = self.engine
        # objects loaded so far live as long as the process: keep them out of every GC pass
        # (measured: BentoML p99 about 240 ms -> 70 ms)
        gc.collect()
        gc.freeze()
        log.info("serving %s v%s (%s %s, %s) on %s", CFG.model, CFG.version, self.engine.cfg.framework,
                 self.engine.cfg.task, self.engine.cfg.input, self.engine.device)

    @bentoml.api(route="/predict")
    def predict(self, instances: list[Any]) -> Any:
        """BentoML's route for the same prediction (used only if the fast path is not active)."""
        eng = self.engine
        try:
            decoded = [eng.decode(inst, i) for i, inst in enumerate(instances)]
        except InstanceError as e:
            raise bentoml.exceptions.InvalidArgument(str(e)) from None
        ys = eng.predict([x for x, _ in decoded])
        return {"predictions": [eng.format(y, m) for y, (_, m) in zip(ys, decoded)]}


svc = KilnService
