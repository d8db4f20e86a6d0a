"""Start KServe's ModelServer with the upscaler model and fal's routes on the same port."""

from __future__ import annotations

import logging
import warnings

from kserve import ModelServer
from kserve.model_server import app as kserve_app

from predictor.auth import KeyAuthMiddleware
from predictor.config import Settings
from predictor.model import UpscalerModel
from predictor.playground import mount_playground
from predictor.queue import QueueBackend
from predictor.queue_routes import FalProxyMiddleware, mount_queue_routes
from predictor.routes import add_telemetry_middleware, mount_fal_routes
from predictor.telemetry import configure_request_log

log = logging.getLogger("predictor.server")


class BoundModelServer(ModelServer):
    """KServe's ModelServer, binding the host it is given (KServe's binds 0.0.0.0), serving TLS
    from our flags, and running the queue's consumers inside its event loop."""

    def __init__(
        self,
        host: str,
        tls: tuple[str | None, str | None] = (None, None),
        queue: QueueBackend | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.tls = tls
        self.queue = queue

    async def _serve(self) -> None:
        if self._rest_server is not None:
            config = self._rest_server.config
            config.host = self.host
            config.ssl_certfile, config.ssl_keyfile = self.tls  # uvicorn loads them at start
        if self.queue is not None:
            await self.queue.start()
        try:
            await super()._serve()  # returns once uvicorn has drained in-flight HTTP requests
        finally:
            if self.queue is not None:  # a shared queue gets its running requests back
                await self.queue.stop()


def serve(settings: Settings) -> None:
    # KServe's app defaults to ORJSONResponse, which FastAPI now flags on every first response
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    configure_request_log()
    model = UpscalerModel(settings)
    model.load()
    mount_fal_routes(kserve_app, model.ready_upscaler, settings.max_body_bytes)
    mount_queue_routes(kserve_app, model.ready_queue, settings.public_url)
    mount_playground(kserve_app)  # the page at /playground, and at / for browsers
    # added after the fal routes' middleware, so these wrap it: keys are checked inside the
    # telemetry (a 401 is counted) and the proxy rewrites paths before anything else sees them
    if settings.api_keys:
        kserve_app.add_middleware(KeyAuthMiddleware, keys=settings.api_keys)
    add_telemetry_middleware(kserve_app, model.ready_upscaler)
    kserve_app.add_middleware(FalProxyMiddleware)
    log.info(
        "serving %s on %s://%s:%d (fal route /%s, KServe v1 /v1/models/%s:predict)",
        settings.engine,
        "https" if settings.tls_cert else "http",
        settings.host,
        settings.port,
        "fal-ai/chrono-edit-lora-gallery/upscaler",
        settings.model_name,
    )
    server = BoundModelServer(
        settings.host,
        (settings.tls_cert, settings.tls_key),
        model.queue,
        http_port=settings.port,
        enable_grpc=False,
        workers=1,
    )
    server.start([model])
