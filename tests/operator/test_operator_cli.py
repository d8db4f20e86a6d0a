"""The command line: flags default from the environment; --print-crd prints the one CRD."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from upscaler_operator.__main__ import build_parser, config_from_args, main
from upscaler_operator.crd import crd_text

from tests.operator.conftest import ROOT


def config(argv: list[str], environ: dict[str, str] | None = None):
    return config_from_args(build_parser(environ or {}).parse_args(argv))


def test_operator_cli_defaults() -> None:
    settings = config([])
    assert settings.namespaces == ()  # the whole cluster
    assert (settings.metrics_port, settings.liveness_port) == (8000, 8080)
    assert settings.predictor_image == "ghcr.io/chrono-upscaler/predictor:0.1.0"


def test_operator_cli_reads_the_environment_and_flags_win() -> None:
    environ = {
        "WATCH_NAMESPACE": "team-a, team-b",
        "PREDICTOR_IMAGE": "registry.example.com/p:2",
        "METRICS_PORT": "9100",
        "LIVENESS_PORT": "0",
        "RETRY_DELAY_SECONDS": "5",
    }
    settings = config([], environ)
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.predictor_image == "registry.example.com/p:2"
    assert (settings.metrics_port, settings.liveness_port, settings.retry_delay_s) == (9100, 0, 5)
    assert config(["-n", "only"], environ).namespaces == ("only",)
    assert config(["--metrics-port", "1"], environ).metrics_port == 1


def test_operator_cli_prints_the_crd(capsys) -> None:
    assert main(["--print-crd"]) == 0
    assert capsys.readouterr().out == crd_text()


def test_operator_cli_module_and_console_script_start() -> None:
    commands = [[sys.executable, "-m", "upscaler_operator", "--help"]]
    script = shutil.which("upscaler-operator", path=str(Path(sys.executable).parent))
    if script is not None:  # the console script declared in pyproject.toml, once installed
        commands.append([script, "--help"])
    for command in commands:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "--liveness-port" in done.stdout


def test_operator_cli_without_credentials_exits_cleanly(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    done = subprocess.run(
        [sys.executable, "-m", "upscaler_operator", "--metrics-port", "0", "--liveness-port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "no Kubernetes credentials" in done.stderr


def test_operator_cli_default_redis_from_the_environment() -> None:
    settings = config([], {"UPSCALER_REDIS_URL": "redis://redis.upscaler.svc:6379/0"})
    assert settings.default_redis_url == "redis://redis.upscaler.svc:6379/0"
    assert settings.default_redis_secret is None
    settings = config([], {"UPSCALER_REDIS_SECRET": "upscaler-redis"})
    assert (settings.default_redis_url, settings.default_redis_secret) == (None, "upscaler-redis")
    assert config([]).default_redis_url is None and config([]).default_redis_secret is None
    settings = config(["--default-redis-secret", "r"], {"UPSCALER_REDIS_SECRET": "x"})
    assert settings.default_redis_secret == "r"


def test_operator_cli_refuses_a_default_redis_with_credentials(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--default-redis-url", "redis://:hunter2@redis:6379/0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "carries credentials" in err and "hunter2" not in err
    with pytest.raises(SystemExit):
        main(["--default-redis-url", "redis://r", "--default-redis-secret", "s"])
