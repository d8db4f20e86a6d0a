"""The composition root: build the engine, the output store, the journey, the queue and the app,
then start KServe's ModelServer with fal's routes on the same port.

Everything is wired here and only here; the modules it assembles take what they need as
arguments and never build their neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from kserve import ModelServer
from kserve.model_server import app as kserve_app

from predictor.api.auth import KeyAuthMiddleware
from predictor.api.connections import MAX_HEADER_BYTES, BoundedH11Protocol
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
        from predictor.storage.redis import RedisOutputStore, connect

        if not settings.redis_url:
            raise ValueError("output_store 'redis' needs redis_url")
        return RedisOutputStore(
            connect(settings.redis_url),
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


#: after the grace period, how long stopped jobs get to reach their next step or tile
STOP_WAIT_S = 10.0
#: how long finished requests' webhooks get to be delivered before the process exits
WEBHOOK_FLUSH_S = 5.0


class BoundModelServer(ModelServer):
    """KServe's ModelServer, binding the host it is given (KServe's binds 0.0.0.0), serving TLS
    from our flags, running the queue's consumers inside its event loop, and shutting down in
    bounded time without losing accepted work (:meth:`drain`)."""

    def __init__(
        self,
        host: str,
        tls: tuple[str | None, str | None] = (None, None),
        queue: QueueBackend | None = None,
        upscaler: Upscaler | None = None,
        shutdown_grace_s: float = Settings.shutdown_grace_s,
        enable_model_control: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.tls = tls
        self.queue = queue
        self.upscaler = upscaler
        self.shutdown_grace_s = shutdown_grace_s
        self._draining: asyncio.Task | None = None
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
            # header size and reading time bounded (api/connections.py)
            config.http = BoundedH11Protocol
            config.h11_max_incomplete_event_size = MAX_HEADER_BYTES
            self._hook_signals(self._rest_server._server)
        if self.queue is not None:
            await self.queue.start()
        try:
            await super()._serve()  # returns once uvicorn has drained in-flight HTTP requests
        finally:
            if self.queue is not None:  # a shared queue gets its running requests back
                await self.queue.stop()

    def _hook_signals(self, uvicorn_server: Any) -> None:
        """uvicorn stops listening on the first SIGTERM/SIGINT; ours drains first (the listener
        stays open meanwhile, so late clients get a 503 with Retry-After instead of a refused
        connection), then hands the signal to uvicorn. A second signal stops at once."""
        exit_now = uvicorn_server.handle_exit
        loop = asyncio.get_running_loop()

        def begin_drain(sig: int, frame: Any) -> None:
            if self._draining is not None or self.upscaler is None:
                exit_now(sig, frame)
                return
            self._draining = loop.create_task(self.drain())
            self._draining.add_done_callback(lambda _: exit_now(sig, frame))

        # uvicorn installs ``handle_exit`` with signal.signal when it starts serving; the signal
        # lands between two bytecodes of the loop's thread, so the drain starts from the loop
        uvicorn_server.handle_exit = lambda sig, frame: loop.call_soon_threadsafe(
            begin_drain, sig, frame
        )

    async def drain(self) -> None:
        """Stop admission now; give running work ``shutdown_grace_s``; stop what is left.

        Requests not yet on a worker end at once with a 503 (they can retry elsewhere); every
        queued request here ends with a status and its webhook is delivered; a shared queue gets
        back what this replica could not finish.
        """
        assert self.upscaler is not None
        pool = self.upscaler.pool
        started = time.monotonic()
        grace = self.shutdown_grace_s
        pool.close(
            "The server is shutting down; the request had not started. Retry it: another "
            "replica (or this one, restarted) will run it."
        )
        log.info(
            "shutting down: admission closed; %d running job(s) get up to %g s",
            pool.inflight,
            grace,
        )
        if not await pool.wait_idle(grace):
            log.warning("shutdown grace of %g s over: stopping %d job(s)", grace, pool.inflight)
            pool.stop(
                f"The server shut down before the request finished (its shutdown grace period "
                f"is {grace:g} s). Retry it: another replica (or this one, restarted) will run it."
            )
            await pool.wait_idle(STOP_WAIT_S)
        if self.queue is not None:
            await self.queue.stop()
            if not await self.queue.wait_delivered(WEBHOOK_FLUSH_S):
                log.warning("some webhooks were still being delivered at exit")
        log.info("drained in %.2f s; exiting", time.monotonic() - started)


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
    if single := settings.single_replica_parts():
        log.warning(
            "this configuration serves one replica only: %s. Behind a Service with more "
            "replicas, queue status and /files/ links would answer 404 on the others; use "
            "--redis-url (queue and outputs) or --output-store s3://… (docs/replicas.md)",
            "; ".join(single),
        )
    log.info(
        "queue: %s; outputs: %s; shutdown grace: %g s",
        settings.queue_kind,
        settings.output_store_kind,
        settings.shutdown_grace_s,
    )
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
        model.upscaler,
        settings.shutdown_grace_s,
        settings.enable_model_control,
        http_port=settings.port,
        enable_grpc=False,
        workers=1,
    )
    server.start([model])
