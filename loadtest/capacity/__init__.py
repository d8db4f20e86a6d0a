"""A capacity and cost planner: a discrete-event simulation (SimPy) of an UpscalerDeployment.

``python -m loadtest.capacity`` (docs/capacity.md). The rooms:

* :mod:`loadtest.capacity.deployment` — the UpscalerDeployment YAML, read with the operator's own
  spec parser, into the scaling settings the simulation needs;
* :mod:`loadtest.capacity.service` — service times (per image, by output size, steps and LoRAs)
  and replica start-up, given explicitly or read from ``make bench`` / ``make bench-gpu`` output;
* :mod:`loadtest.capacity.traffic` — arrivals: constant, daily curve, bursts, a CSV trace, or
  closed-loop users like the load test's;
* :mod:`loadtest.capacity.autoscalers` — Knative's KPA, KEDA on the queue with the HPA behind it,
  and KServe's HPA on CPU, as pure state machines with their documented defaults;
* :mod:`loadtest.capacity.simulate` — the SimPy model: replicas, queues, the autoscaler's loop;
* :mod:`loadtest.capacity.summary` — latency percentiles, GPU-hours, $/image against fal's price;
* :mod:`loadtest.capacity.report` — ``results.json``, ``report.md`` and ``capacity.png``;
* :mod:`loadtest.capacity.recommend` — the cheapest scaling settings that meet a latency target;
* :mod:`loadtest.capacity.compare` — the simulator against a real local run on the ``sr`` tier;
* :mod:`loadtest.capacity.cli` — the command line.
"""
