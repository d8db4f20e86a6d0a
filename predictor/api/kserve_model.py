"""The KServe custom model: loads the engine once and answers KServe's v1 predict protocol.

``{"instances": [<fal request>, ...]}`` → ``{"predictions": [<fal response>, ...]}``; each
instance goes through the same journey as the fal route.
"""

from __future__ import annotations

import logging
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput

from predictor.api.errors import parse_request
from predictor.journey import Upscaler
from predictor.queue.base import QueueBackend

log = logging.getLogger("predictor.api.kserve_model")


def base_url_from_headers(headers: dict[str, str] | None) -> str:
    """Absolute base URL of this server as the client reached it (its Host header).

    Behind a TLS-terminating proxy set ``--public-url``: KServe hands this route the headers only.
    """
    headers = {key.lower(): value for key, value in (headers or {}).items()}
    return f"http://{headers.get('host') or 'localhost'}"


class UpscalerModel(Model):
    """The upscaler as KServe sees it: ready once built (``predictor.server`` builds it)."""

    def __init__(self, name: str, upscaler: Upscaler, queue: QueueBackend) -> None:
        super().__init__(name)
        self.upscaler: Upscaler = upscaler
        self.queue: QueueBackend = queue
        self.ready = True

    def load(self) -> bool:
        """Everything was loaded when the model was built; KServe calls this to (re)load."""
        self.ready = True
        return self.ready

    async def healthy(self) -> bool:
        """KServe's model readiness: built, and its queue reached its store (Redis) once."""
        return self.ready and self.queue.ready

    def ready_upscaler(self) -> Upscaler | None:
        return self.upscaler if self.ready else None

    def ready_queue(self) -> QueueBackend | None:
        return self.queue if self.ready else None

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
        base_url = base_url_from_headers(headers)
        # one deadline for the whole HTTP request, however many instances it carries
        deadline = self.upscaler.deadline()
        predictions = []
        for request in requests:
            response = await self.upscaler.upscale(request, base_url, deadline=deadline)
            predictions.append(response.model_dump(mode="json"))
        return {"predictions": predictions}

    def stop(self) -> None:
        if self.upscaler is not None:
            self.upscaler.close()
        super().stop()
