"""Load tests for the fal-compatible upscaler: ``python -m loadtest run|overload``.

See docs/loadtest.md. The package is split so that only ``loadtest/__main__.py`` imports
locust (which monkey-patches the standard library with gevent) when it is imported; every other
module is plain Python:

* :mod:`loadtest.profiles` — the request mixes and the pool of pre-encoded photos;
* :mod:`loadtest.stats` — what one run recorded, percentiles and summaries;
* :mod:`loadtest.scrape` — the server's ``/metrics`` and ``/info``: cost deltas, memory, capacity;
* :mod:`loadtest.overload` — the overload scenario's pass rules;
* :mod:`loadtest.report` — ``results.json``, ``report.md`` and ``latency.png``;
* :mod:`loadtest.users` — the locust user (sync and queue journeys), built on demand;
* :mod:`loadtest.runner` — one headless locust run from start to report;
* :mod:`loadtest.cli` — the command line;
* :mod:`loadtest.capacity` — a capacity and cost planner: a simulation of a deployment
  (``python -m loadtest.capacity``, docs/capacity.md).
"""
