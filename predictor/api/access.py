"""Who may call each route on the port: the one table the key guard and KServe's route
registration (:mod:`predictor.api.kserve_routes`) both read, so they cannot disagree.

Light on purpose (no FastAPI, no KServe): the command line loads the key guard's module.
"""

from __future__ import annotations

import re
from enum import StrEnum

from predictor.schema import APP_ID, OWNER_ALIAS

#: fal's proxy convention (``x-fal-target-url``), rewritten onto our routes by a middleware
PROXY_PATH = "/api/fal/proxy"


class Access(StrEnum):
    OPEN = "open"  # anyone: probes, metrics, the document, output files, the playground
    KEY = "key"  # runs or changes something: needs a key when keys are configured
    CONTROL = "control"  # only with --enable-model-control, and then behind the key


V1 = "/v1/models/{model_name}"
V2 = "/v2/models/{model_name}"
#: (method, path) → who may call it; our routes are here too, so the table is the whole port.
#: Not here, so never served: KServe's /v2 server metadata, v2 model metadata and v2 infer.
ROUTES: dict[tuple[str, str], Access] = {
    # ours (api/routes.py, api/queue_routes.py, the playground)
    ("POST", f"/{APP_ID}"): Access.KEY,
    ("POST", f"/queue/{APP_ID}"): Access.KEY,
    **{
        (method, f"/queue/{app}/requests/{{request_id}}{tail}"): Access.KEY
        for app in (OWNER_ALIAS, APP_ID)
        for method, tail in (
            ("GET", "/status"),
            ("GET", "/status/stream"),
            ("GET", ""),
            ("PUT", "/cancel"),
        )
    },
    ("GET", "/files/{file_name}"): Access.OPEN,
    ("GET", "/info"): Access.OPEN,
    ("GET", "/playground"): Access.OPEN,
    ("GET", "/playground/{name}"): Access.OPEN,
    ("GET", "/openapi.json"): Access.OPEN,
    # KServe's, deliberately exposed: probes, readiness, metrics, and v1 predict (ours)
    ("GET", "/"): Access.OPEN,
    ("GET", "/metrics"): Access.OPEN,
    ("GET", "/v1/models"): Access.OPEN,
    ("GET", V1): Access.OPEN,
    ("POST", V1 + ":predict"): Access.KEY,
    ("GET", "/v2/health/live"): Access.OPEN,
    ("GET", "/v2/health/ready"): Access.OPEN,
    ("GET", V2 + "/ready"): Access.OPEN,
    # KServe's model control: off unless --enable-model-control
    ("POST", V1 + ":explain"): Access.CONTROL,
    ("POST", "/v2/repository/models/{model_name}/load"): Access.CONTROL,
    ("POST", "/v2/repository/models/{model_name}/unload"): Access.CONTROL,
}


def _pattern(path: str) -> str:
    """A route's path template as a regex: each ``{name}`` is one path segment."""
    return re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path))


#: the paths that run or change something: every route not OPEN, and the proxy (its target is
#: one of them; the guard may see the proxy's own path)
_GUARDED = re.compile(
    "^(?:{})$".format(
        "|".join(
            [
                re.escape(PROXY_PATH),
                *sorted(
                    {_pattern(path) for (_, path), a in ROUTES.items() if a is not Access.OPEN}
                ),
            ]
        )
    )
)


def is_guarded(path: str) -> bool:
    """Whether ``path`` needs a key when keys are configured."""
    return _GUARDED.match(path) is not None
