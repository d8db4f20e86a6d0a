"""Drive the official ``fal-client`` package, unchanged, against this server.

Run as a script with FAL_RUN_HOST / FAL_QUEUE_RUN_HOST / FAL_KEY / SSL_CERT_FILE set (the client
reads them at import); prints one JSON document with what it saw. Usage:
``python fal_python_driver.py SCENARIO < ARGUMENTS_JSON``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import fal_client

APP = "fal-ai/chrono-edit-lora-gallery/upscaler"


def status_name(status: Any) -> str:
    return type(status).__name__


def run(arguments: dict) -> dict:
    return {"result": fal_client.run(APP, arguments=arguments)}


def submit_status_get(arguments: dict) -> dict:
    handle = fal_client.submit(APP, arguments=arguments)
    seen = []
    while True:
        status = handle.status(with_logs=True)
        seen.append(status_name(status))
        if isinstance(status, fal_client.Completed):
            break
        time.sleep(0.05)
    # the short-form URLs the client builds from the app id alone
    by_id = fal_client.status(APP, handle.request_id, with_logs=True)
    return {
        "request_id": handle.request_id,
        "statuses": seen,
        "logs": [line["message"] for line in status.logs or []],
        "metrics": status.metrics,
        "by_id": status_name(by_id),
        "result": handle.get(),
        "result_by_id": fal_client.result(APP, handle.request_id),
    }


def subscribe(arguments: dict) -> dict:
    updates: list[dict] = []

    def on_update(status: Any) -> None:
        updates.append(
            {
                "type": status_name(status),
                "logs": [line["message"] for line in getattr(status, "logs", None) or []],
            }
        )

    result = fal_client.subscribe(
        APP, arguments=arguments, with_logs=True, on_queue_update=on_update
    )
    return {"result": result, "updates": updates}


def cancel(arguments: dict) -> dict:
    """A long job runs; a second waits behind it. Cancel the waiting one, then the running one."""
    running = fal_client.submit(APP, arguments=arguments["long"])
    while not any(  # running, and past its first tile
        line["message"].startswith("tile ")
        for line in getattr(running.status(with_logs=True), "logs", None) or []
    ):
        time.sleep(0.05)
    waiting = fal_client.submit(APP, arguments=arguments["short"])
    waiting_before = waiting.status()
    waiting.cancel()
    running.cancel()
    out: dict[str, Any] = {
        "waiting_before": [status_name(waiting_before), getattr(waiting_before, "position", None)]
    }
    for name, handle in (("waiting", waiting), ("running", running)):
        final = None
        for _ in range(600):
            final = handle.status(with_logs=True)
            if isinstance(final, fal_client.Completed):
                break
            time.sleep(0.05)
        try:
            handle.get()
            error = None
        except fal_client.client.FalClientHTTPError as exc:
            error = {"status": exc.status_code, "error_type": exc.error_type}
        out[name] = {
            "status": status_name(final),
            "error_type": getattr(final, "error_type", None),
            "logs": [line["message"] for line in getattr(final, "logs", None) or []],
            "get": error,
        }
    started = time.monotonic()
    out["after"] = fal_client.run(APP, arguments=arguments["short"])
    out["after_s"] = time.monotonic() - started
    try:
        running.cancel()
        out["cancel_again"] = None
    except fal_client.client.FalClientHTTPError as exc:
        out["cancel_again"] = exc.status_code
    return out


def http_error(arguments: dict) -> dict:
    try:
        fal_client.run(APP, arguments=arguments)
    except fal_client.client.FalClientHTTPError as exc:
        return {"status": exc.status_code, "message": exc.message, "error_type": exc.error_type}
    return {"status": 200}


SCENARIOS = {f.__name__: f for f in (run, submit_status_get, subscribe, cancel, http_error)}

if __name__ == "__main__":
    scenario, arguments = sys.argv[1], json.load(sys.stdin)
    print(json.dumps(SCENARIOS[scenario](arguments), default=str))
