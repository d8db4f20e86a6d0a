"""``python -m loadtest.capacity simulate|recommend|compare`` (docs/capacity.md).

It lives beside the load test rather than in ``chrono-upscaler``: it answers the same question
from the other side (what a deployment would do, before it exists), shares the load test's
profiles, percentiles and report layout, and needs the ``loadtest`` and ``operator`` extras
(SimPy, matplotlib, the operator's spec parser), which a serving image need not carry.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from loadtest.capacity import deployment as deployment_module
from loadtest.capacity import service, traffic
from loadtest.capacity.report import render_markdown, write_outputs
from loadtest.capacity.simulate import SimSettings, simulate
from loadtest.capacity.summary import summarize_outcome
from loadtest.cli import non_negative, parse_duration, positive
from loadtest.profiles import PROFILES


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0: {text}")
    return value


def _add_inputs(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--deployment", type=Path, required=True, help="UpscalerDeployment YAML")
    t = sub.add_argument_group("traffic")
    t.add_argument(
        "--traffic", choices=("constant", "daily", "bursts", "trace", "users"), default="constant"
    )
    t.add_argument("--duration", type=parse_duration, default=3600.0, help="e.g. 1h, 24h, 90s")
    t.add_argument("--rate", type=positive(float), help="constant, bursts (base): requests/s")
    t.add_argument("--peak-rate", type=positive(float), help="daily: requests/s at the peak")
    t.add_argument("--trough-rate", type=non_negative, default=0.0, help="daily: at night")
    t.add_argument("--peak-hour", type=float, default=14.0, help="daily: hour of the peak")
    t.add_argument("--burst-rate", type=positive(float), help="bursts: requests/s during a burst")
    t.add_argument("--burst-every", type=parse_duration, default=3600.0)
    t.add_argument("--burst-for", type=parse_duration, default=300.0)
    t.add_argument("--trace", type=Path, help="trace: CSV of time, width, height[, steps, loras]")
    t.add_argument("--users", type=_count, help="users: closed-loop clients (the load test's)")
    t.add_argument("--think", type=non_negative, default=0.0, help="users: seconds between")
    sizes = t.add_mutually_exclusive_group()
    sizes.add_argument("--sizes", help="output sizes: 1280x720 or 854x480:0.7,1280x720:0.3")
    sizes.add_argument("--profile", choices=sorted(PROFILES), help="the load test's request mix")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--initial-replicas",
        type=_count,
        default=None,
        help="replicas already serving at the start (default: minReplicas); a busy hour "
        "starts from its steady state, not from a cold deployment",
    )
    s = sub.add_argument_group("service times")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--service", type=Path, help="YAML of points (docs/capacity.md)")
    source.add_argument("--bench-gpu", type=Path, help="saved `make bench-gpu` output")
    source.add_argument("--bench", type=Path, help="saved `make bench` output (sr)")
    source.add_argument("--seconds", type=positive(float), help="every image takes this long")
    s.add_argument(
        "--steps", type=int, default=30, help="with --bench-gpu: steps per image (fal's default)"
    )
    s.add_argument(
        "--fixed-seconds",
        type=non_negative,
        default=None,
        help="with --bench-gpu: seconds per image outside the steps (default: what it measured)",
    )
    s.add_argument(
        "--bench-gpu-mode",
        default=None,
        help="with --bench-gpu: the rows of one mode, e.g. 'compiled fp8' (default: compiled bf16)",
    )
    s.add_argument("--lora-seconds", type=non_negative, default=None)
    s.add_argument("--cold-start", type=non_negative, default=None, help="seconds, a cold node")
    s.add_argument("--cached-start", type=non_negative, default=None, help="seconds, cached")
    s.add_argument(
        "--service-distribution", choices=("fixed", "exponential", "lognormal"), default="fixed"
    )
    s.add_argument(
        "--service-sigma",
        type=non_negative,
        default=0.5,
        help="lognormal: the spread of ln(engine time) around the model's time",
    )
    s.add_argument(
        "--overhead",
        type=non_negative,
        default=0.0,
        help="seconds per request outside the engine (HTTP, queue polling, download)",
    )
    o = sub.add_argument_group("outputs")
    o.add_argument("--hourly-usd", type=non_negative, help="price of one replica-hour")
    o.add_argument("--client-timeout", type=positive(float), help="default: requestTimeoutSeconds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.capacity",
        description="Simulate an UpscalerDeployment: latency, replicas, GPU-hours, $/image.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="one simulation: report, results, plot")
    _add_inputs(sim)
    sim.add_argument("--out", type=Path, required=True, help="directory for the report")
    rec = commands.add_parser("recommend", help="the cheapest scaling that meets a p95 target")
    _add_inputs(rec)
    rec.add_argument("--p95", type=positive(float), required=True, help="seconds, end to end")
    rec.add_argument(
        "--max-replicas-limit",
        type=int,
        default=None,
        help="the most replicas to consider (default: 2 × maxReplicas, at least 8)",
    )
    cmp_ = commands.add_parser(
        "compare", help="the simulator against a real local sr run (Redis, several replicas)"
    )
    from loadtest.capacity import compare

    compare.add_arguments(cmp_)
    return parser


class InputError(ValueError):
    pass


def service_model(args: argparse.Namespace) -> service.ServiceModel:
    """The service times from one source, with the start-up and LoRA options laid over them."""
    if args.service:
        raw = service.load_raw(args.service)
    elif args.bench_gpu:
        points = service.from_bench_gpu(
            _read(args.bench_gpu),
            steps=args.steps,
            fixed_s=args.fixed_seconds,
            mode=args.bench_gpu_mode,
        )
        raw = {"points": points, "default_steps": args.steps}
    elif args.bench:
        raw = {"points": service.from_bench(_read(args.bench))}
    else:  # the same time at every size
        flat = {"height": 1, "seconds": args.seconds}
        raw = {"points": [{"width": 1, **flat}, {"width": 1 << 30, **flat}]}
    startup = dict(raw.get("startup") or {})
    if args.cold_start is not None:
        startup["cold_seconds"] = args.cold_start
    if args.cached_start is not None:
        startup["cached_seconds"] = args.cached_start
    raw = {**raw, "startup": startup}
    if args.lora_seconds is not None:
        raw["lora_seconds"] = args.lora_seconds
    source = str(args.service) if args.service else "service"
    return service.model_from_dict(raw, source=source)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: {exc}") from exc


def size_mix(args: argparse.Namespace) -> traffic.SizeMix:
    if args.profile:
        return traffic.profile_sizes(args.profile)
    return traffic.parse_size_mix(args.sizes or "1280x720")


def build_traffic(args: argparse.Namespace) -> traffic.Traffic:
    mix = size_mix(args)

    def need(name: str):
        value = getattr(args, name.replace("-", "_"))
        if value is None:
            raise InputError(f"--traffic {args.traffic} needs --{name}")
        return value

    kind = args.traffic
    if kind == "constant":
        return traffic.constant(need("rate"), args.duration, mix, args.seed)
    if kind == "daily":
        return traffic.daily(
            need("peak-rate"), args.trough_rate, args.duration, mix, args.peak_hour, args.seed
        )
    if kind == "bursts":
        return traffic.bursts(
            need("rate"),
            need("burst-rate"),
            args.burst_every,
            args.burst_for,
            args.duration,
            mix,
            args.seed,
        )
    if kind == "trace":
        return traffic.load_trace(need("trace"), mix if (args.sizes or args.profile) else None)
    users = need("users")
    if users < 1:
        raise InputError("--users must be at least 1")
    return traffic.ClosedLoop(users, args.duration, mix, args.think)


def settings_from_args(args: argparse.Namespace):
    deployment, document = deployment_module.load(args.deployment)
    if args.hourly_usd is not None:
        deployment = deployment.with_scaling(replica_hourly_usd=args.hourly_usd)
    sim = SimSettings(
        deployment=deployment,
        service=service_model(args),
        traffic=build_traffic(args),
        service_distribution=args.service_distribution,
        service_sigma=args.service_sigma,
        overhead_s=args.overhead,
        seed=args.seed,
        sample_s=max(1.0, args.duration / 1000.0),
        initial_replicas=args.initial_replicas,
    )
    timeout = args.client_timeout or deployment.request_timeout_s
    return sim, document, timeout


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compare":
        from loadtest.capacity import compare

        return compare.main(args)
    try:
        sim, document, timeout = settings_from_args(args)
    except (
        InputError,
        deployment_module.DeploymentError,
        service.ServiceError,
        traffic.TrafficError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "simulate":
        started = time.perf_counter()
        outcome = simulate(sim)
        took = time.perf_counter() - started
        results = summarize_outcome(outcome, timeout)
        results["simulation_wall_s"] = took
        paths = write_outputs(args.out, results, outcome)
        print(render_markdown(results))
        print(f"simulated in {took:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
        return 0
    return _recommend(args, sim, document, timeout)


def _recommend(args, sim: SimSettings, document: dict, timeout: float) -> int:
    from loadtest.capacity.recommend import patch_text, recommend

    d = sim.deployment
    limit = args.max_replicas_limit or max(8, 2 * d.max_replicas)

    def cost_of(results: dict) -> float:
        usd = results["cost"]["usd"]
        return usd if usd is not None else results["replicas"]["replica_hours"]

    best = recommend(
        document,
        sim,
        p95_target_s=args.p95,
        cost_of=cost_of,
        summarize=lambda outcome: summarize_outcome(outcome, timeout),
        max_replicas_limit=limit,
        log=lambda line: print(line, file=sys.stderr),
    )
    if best is None:
        print(
            f"No setting up to {limit} replicas meets p95 ≤ {args.p95:g} s "
            "(raise --max-replicas-limit, or the traffic is beyond one deployment)."
        )
        return 1
    unit = "USD" if best.results["cost"]["usd"] is not None else "replica-hours"
    print(
        f"Cheapest setting meeting p95 ≤ {args.p95:g} s: p95 {best.p95_s:.1f} s, "
        f"{best.cost:.4g} {unit}, {best.results['replicas']['mean']:.2f} replicas on average.\n"
        "Patch (kubectl patch upscalerdeployment NAME --type merge --patch-file patch.yaml):\n"
    )
    print(patch_text(document, best.fields))
    return 0
