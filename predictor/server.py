"""Start KServe's ModelServer with the upscaler model and fal's routes on the same port."""

from __future__ import annotations

import logging
import warnings

from kserve import ModelServer
from kserve.model_server import app as kserve_app

from predictor.config import Settings
from predictor.model import UpscalerModel
from predictor.routes import mount_fal_routes
from predictor.telemetry import configure_request_log

log = logging.getLogger("predictor.server")


class BoundModelServer(ModelServer):
    """KServe's ModelServer always binds 0.0.0.0; this one binds the host it is given."""

    def __init__(self, host: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.host = host

    async def _serve(self) -> None:
        if self._rest_server is not None:
            self._rest_server.config.host = self.host
        await super()._serve()


def serve(settings: Settings) -> None:
    # KServe's app defaults to ORJSONResponse, which FastAPI now flags on every first response
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    configure_request_log()
    model = UpscalerModel(settings)
    model.load()
    mount_fal_routes(kserve_app, model.ready_upscaler, settings.max_body_bytes)
    log.info(
        "serving %s on http://%s:%d (fal route /%s, KServe v1 /v1/models/%s:predict)",
        settings.engine,
        settings.host,
        settings.port,
        "fal-ai/chrono-edit-lora-gallery/upscaler",
        settings.model_name,
    )
    server = BoundModelServer(settings.host, http_port=settings.port, enable_grpc=False, workers=1)
    server.start([model])
