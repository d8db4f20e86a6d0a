"""The composition root: build the engine, the output store, the journey, the queue and the app,
then start KServe's ModelServer with fal's routes on the same port.

Everything is wired here and only here; the modules it assembles take what they need as
arguments and never build their neighbours.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from kserve import ModelServer
from kserve.model_server import app as kserve_app

from predictor.api.auth import KeyAuthMiddleware
from predictor.api.kserve_model import UpscalerModel
from predictor.api.kserve_routes import mount_v1_predict, register_kserve_routes
from predictor.api.playground import mount_playground
from predictor.api.queue_routes import FalProxyMiddleware, mount_queue_routes
from predictor.api.routes import add_telemetry_middleware, mount_fal_routes
from predictor.config import Settings
from predictor.engines import load_engine
from predictor.journey import Upscaler
from predictor.queue.base import Outcome, QueueBackend
from predictor.queue.local import LocalQueue
from predictor.queue.webhooks import WebhookSettings, deliver_webhook
from predictor.schema import APP_ID
from predictor.storage.base import OutputStore
from predictor.storage.memory import MemoryOutputStore
from predictor.telemetry import configure_request_log

log = logging.getLogger("predictor.server")

OnFinished = Callable[[str, str | None, Outcome], Awaitable[None]]


def open_output_store(settings: Settings) -> OutputStore:
    """``--output-store memory|redis|s3://bucket/prefix`` (redis needs ``--redis-url``)."""
    kind = settings.output_store
    if kind == "memory":
        return MemoryOutputStore(settings.output_store_bytes, settings.output_ttl_s)
    if kind == "redis":
        import redis

        from predictor.storage.redis import RedisOutputStore

        if not settings.redis_url:
            raise ValueError("output_store 'redis' needs redis_url")
        return RedisOutputStore(
            redis.Redis.from_url(settings.redis_url),
            settings.redis_prefix,
            settings.output_ttl_s,
            settings.output_store_bytes,
        )
    if kind.startswith("s3://"):
        from predictor.storage.s3 import S3OutputStore

        return S3OutputStore(
            kind, settings.output_ttl_s, settings.s3_endpoint_url, settings.s3_public_url
        )
    raise ValueError(f"output_store {kind!r}: expected memory, redis or s3://bucket/prefix")


def webhook_sender(settings: Settings) -> OnFinished:
    """What a queue calls when a request ends: deliver its ``fal_webhook``, if it has one."""
    webhook_settings = WebhookSettings(
        secret=settings.webhook_secret,
        allow_private_urls=settings.fetch.allow_private_urls,
        attempts=settings.webhook_attempts,
        first_backoff_s=settings.webhook_backoff_s,
    )

    async def send(request_id: str, webhook_url: str | None, outcome: Outcome) -> None:
        if webhook_url is not None:
            await deliver_webhook(
                webhook_url, request_id, outcome.body, outcome.failed, webhook_settings
            )

    return send


def open_queue(
    upscaler: Upscaler, settings: Settings, on_finished: OnFinished | None = None
) -> QueueBackend:
    """In process by default; shared by every replica with ``--redis-url``."""
    if not settings.redis_url:
        return LocalQueue(upscaler, settings.queue_result_ttl_s, on_finished)
    from predictor.queue.redis import RedisQueue

    return RedisQueue(
        upscaler,
        settings.queue_result_ttl_s,
        on_finished,
        redis_url=settings.redis_url,
        prefix=settings.redis_prefix,
        max_queued=settings.max_queued,
        lease_s=settings.queue_lease_s,
        max_attempts=settings.queue_max_attempts,
    )


def build_model(settings: Settings) -> UpscalerModel:
    """The engine (loaded once), its journey with the output store, and the queue around it."""
    log.info("loading engine=%s options=%s", settings.engine, settings.engine_options)
    engine = load_engine(settings.engine_options)
    upscaler = Upscaler(engine, settings, open_output_store(settings))
    queue = open_queue(upscaler, settings, on_finished=webhook_sender(settings))
    log.info("engine %s ready", engine.name)
    return UpscalerModel(settings.model_name, upscaler, queue)


class BoundModelServer(ModelServer):
    """KServe's ModelServer, binding the host it is given (KServe's binds 0.0.0.0), serving TLS
    from our flags, and running the queue's consumers inside its event loop."""

    def __init__(
        self,
        host: str,
        tls: tuple[str | None, str | None] = (None, None),
        queue: QueueBackend | None = None,
        enable_model_control: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.tls = tls
        self.queue = queue
        self.enable_model_control = enable_model_control

    async def _serve(self) -> None:
        if self._rest_server is not None:
            rest_server = self._rest_server

            def register_endpoints(app: FastAPI) -> None:  # KServe's decided routes only
                register_kserve_routes(
                    app,
                    rest_server.dataplane,
                    rest_server.model_repository_extension,
                    self.enable_model_control,
                )

            rest_server._register_endpoints = register_endpoints
            config = rest_server.config
            config.host = self.host
            config.ssl_certfile, config.ssl_keyfile = self.tls  # uvicorn loads them at start
        if self.queue is not None:
            await self.queue.start()
        try:
            await super()._serve()  # returns once uvicorn has drained in-flight HTTP requests
        finally:
            if self.queue is not None:  # a shared queue gets its running requests back
                await self.queue.stop()


def mount_routes(app: FastAPI, model: UpscalerModel, settings: Settings) -> None:
    """Our routes and middlewares on KServe's app; KServe's decided routes are added when the
    server starts (:func:`register_kserve_routes`)."""
    mount_fal_routes(app, model.ready_upscaler, settings.max_body_bytes)
    mount_queue_routes(
        app, model.ready_queue, settings.public_url, settings.fetch.allow_private_urls
    )
    mount_v1_predict(app, lambda: model)  # before KServe's own :predict, which it replaces
    mount_playground(app)  # the page at /playground, and at / for browsers
    # added after the fal routes' middleware, so these wrap it: keys are checked inside the
    # telemetry (a 401 is counted) and the proxy rewrites paths before anything else sees them
    if settings.api_keys:
        app.add_middleware(KeyAuthMiddleware, keys=settings.api_keys)
    add_telemetry_middleware(app, model.ready_upscaler)
    app.add_middleware(FalProxyMiddleware)


def serve(settings: Settings) -> None:
    # KServe's app defaults to ORJSONResponse, which FastAPI now flags on every first response
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    configure_request_log()
    model = build_model(settings)
    mount_routes(kserve_app, model, settings)
    log.info(
        "serving %s on %s://%s:%d (fal route /%s, KServe v1 /v1/models/%s:predict)",
        settings.engine,
        "https" if settings.tls_cert else "http",
        settings.host,
        settings.port,
        APP_ID,
        settings.model_name,
    )
    server = BoundModelServer(
        settings.host,
        (settings.tls_cert, settings.tls_key),
        model.queue,
        settings.enable_model_control,
        http_port=settings.port,
        enable_grpc=False,
        workers=1,
    )
    server.start([model])
