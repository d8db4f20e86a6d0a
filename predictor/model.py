"""The KServe custom model: loads the engine once and answers KServe's v1 predict protocol.

``{"instances": [<fal request>, ...]}`` → ``{"predictions": [<fal response>, ...]}``; each
instance goes through the same journey as the fal route.
"""

from __future__ import annotations

import logging
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput

from predictor.backends import open_output_store, open_queue
from predictor.config import Settings
from predictor.engines import load_engine
from predictor.journey import Upscaler, parse_request
from predictor.queue import Outcome, QueueBackend
from predictor.webhooks import WebhookSettings, deliver_webhook

log = logging.getLogger("predictor.model")


def base_url_from_headers(headers: dict[str, str] | None) -> str:
    """Absolute base URL of this server as the client reached it (its Host header).

    Behind a TLS-terminating proxy set ``--public-url``: KServe hands this route the headers only.
    """
    headers = {key.lower(): value for key, value in (headers or {}).items()}
    return f"http://{headers.get('host') or 'localhost'}"


class UpscalerModel(Model):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.upscaler: Upscaler | None = None
        self.queue: QueueBackend | None = None

    def load(self) -> bool:
        log.info("loading engine=%s options=%s", self.settings.engine, self.settings.engine_options)
        engine = load_engine(self.settings.engine, **self.settings.engine_options)
        store = open_output_store(self.settings)
        self.upscaler = Upscaler(engine, self.settings, store)
        self.queue = open_queue(self.upscaler, self.settings, on_finished=self._send_webhook)
        self.ready = True
        log.info("engine %s ready", engine.name)
        return self.ready

    def ready_upscaler(self) -> Upscaler | None:
        return self.upscaler if self.ready else None

    def ready_queue(self) -> QueueBackend | None:
        return self.queue if self.ready else None

    async def _send_webhook(
        self, request_id: str, webhook_url: str | None, outcome: Outcome
    ) -> None:
        if webhook_url is None:
            return
        settings = self.settings
        await deliver_webhook(
            webhook_url,
            request_id,
            outcome.body,
            outcome.failed,
            WebhookSettings(
                secret=settings.webhook_secret,
                allow_private_urls=settings.fetch.allow_private_urls,
                attempts=settings.webhook_attempts,
                first_backoff_s=settings.webhook_backoff_s,
            ),
        )

    async def predict(
        self, payload: Any, headers: dict[str, str] | None = None, response_headers=None
    ) -> dict[str, Any]:
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise InvalidInput(
                'Expected a JSON object {"instances": [<fal upscaler request>, ...]} '
                "with at least one instance."
            )
        requests = [
            parse_request(item, ("body", "instances", index))
            for index, item in enumerate(instances)
        ]
        assert self.upscaler is not None
        base_url = base_url_from_headers(headers)
        predictions = []
        for request in requests:
            response = await self.upscaler.upscale(request, base_url)
            predictions.append(response.model_dump(mode="json"))
        return {"predictions": predictions}

    def stop(self) -> None:
        if self.upscaler is not None:
            self.upscaler.close()
        super().stop()
