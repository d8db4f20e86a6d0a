"""What the shared queue, the output stores and webhooks do when their far end is away — each fix
the fault suite (tests/faults) called for, on a real redis-server and real sockets."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from predictor import metrics
from predictor.api.kserve_model import UpscalerModel
from predictor.errors import STORE_UNAVAILABLE, RequestFailed
from predictor.queue.base import Outcome, Status
from predictor.queue.redis import Backoff, RedisQueue
from predictor.queue.webhooks import WebhookSettings, deliver_webhook, retry_delays
from predictor.schema import UpscaleRequest
from predictor.storage.redis import RedisOutputStore, connect
from predictor.storage.s3 import S3OutputStore
from predictor.workers import WorkerPool
from tests.conftest import free_port
from tests.faults.parts import RedisServer, TcpProxy

REQUEST = UpscaleRequest(image_url="https://example.com/a.png")


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    yield server
    server.stop()


def queue_on(url: str, prefix: str = "t") -> RedisQueue:
    upscaler = SimpleNamespace(pool=WorkerPool(1, 4))
    return RedisQueue(upscaler, 60, None, redis_url=url, prefix=prefix, lease_s=2)


def unreachable_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def sample(counter, *labels) -> float:
    return (counter.labels(*labels) if labels else counter)._value.get()


def assert_unavailable(exc: RequestFailed) -> None:
    assert exc.status_code == 503
    assert exc.error_type == STORE_UNAVAILABLE
    assert int(exc.headers()["Retry-After"]) >= 1


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.next() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)


@pytest.mark.asyncio
async def test_queue_routes_answer_503_with_retry_after_while_redis_is_away() -> None:
    queue = queue_on(unreachable_url())
    for call in (
        queue._enqueue("r1", REQUEST, "http://x", None),
        queue.state("r1"),
        queue.cancel("r1"),
    ):
        with pytest.raises(RequestFailed) as caught:
            await asyncio.wait_for(call, 30)  # the guard against a hang, not a timing target
        assert_unavailable(caught.value)


@pytest.mark.asyncio
async def test_a_partitioned_redis_is_a_503_not_a_hang(redis_server) -> None:
    """Nothing answers on the connection (a partition, not a refusal): the read timeout and the
    bounded retries end the call with a 503; once the partition heals the same queue works."""
    proxy = TcpProxy(redis_server.port)
    queue = queue_on(proxy.url)
    await queue._enqueue("r1", REQUEST, "http://x", None)
    proxy.partition()
    with pytest.raises(RequestFailed) as caught:
        await asyncio.wait_for(queue.state("r1"), 60)  # the guard against a hang
    assert_unavailable(caught.value)
    proxy.heal()
    state = await queue.state("r1")
    assert state is not None and state.status is Status.IN_QUEUE


@pytest.mark.asyncio
async def test_not_ready_until_redis_answers_then_ready(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, "predictor.queue.redis")
    server = RedisServer(tmp_path / "late", persistent=False)
    queue = queue_on(server.url)
    model = UpscalerModel("m", SimpleNamespace(close=lambda: None), queue)
    await queue.start()
    try:
        while "unreachable while starting" not in caplog.text:
            await asyncio.sleep(0.05)
        assert not queue.ready and not await model.healthy()
        assert metrics.REDIS_UP.labels("t")._value.get() == 0
        await asyncio.to_thread(server.start)
        for _ in range(200):
            if queue.ready:
                break
            await asyncio.sleep(0.05)
        assert queue.ready and await model.healthy()
        assert metrics.REDIS_UP.labels("t")._value.get() == 1
        assert "shared queue on redis" in caplog.text
        # one line for the outage, not one per retry
        assert caplog.text.count("unreachable while starting") == 1
    finally:
        await queue.stop()
        server.stop()


@pytest.mark.asyncio
async def test_redis_losing_its_data_is_logged_and_counted(redis_server, caplog) -> None:
    queue = queue_on(redis_server.url)
    await queue._check_epoch()
    before = sample(metrics.REDIS_DATA_LOST)
    await queue._check_epoch()
    assert sample(metrics.REDIS_DATA_LOST) == before  # the same data: nothing to say
    await queue.redis.flushall()
    await queue._check_epoch()
    assert sample(metrics.REDIS_DATA_LOST) == before + 1
    assert "lost its data" in caplog.text
    # a second replica that saw the old marker notices too
    other = queue_on(redis_server.url)
    other.epoch = "an-older-marker"
    await other._check_epoch()
    assert sample(metrics.REDIS_DATA_LOST) == before + 2


async def claimed_one(queue: RedisQueue, request_id: str = "r1"):
    await queue._check_epoch()
    await queue._enqueue(request_id, REQUEST, "http://x", "http://hook")
    job = await queue._claim()
    assert job is not None and job.request_id == request_id
    return job


@pytest.mark.asyncio
async def test_a_running_request_whose_record_vanished_is_recorded_again(redis_server) -> None:
    queue = queue_on(redis_server.url)
    job = await claimed_one(queue)
    await queue.redis.flushall()  # Redis restarted empty while r1 runs here
    assert await queue.state("r1") is None
    runner = asyncio.create_task(asyncio.sleep(30))
    renewer = asyncio.create_task(queue._renew(job, runner, {}))
    try:
        for _ in range(100):
            if (state := await queue.state("r1")) is not None:
                break
            await asyncio.sleep(0.05)
        assert state is not None and state.status is Status.IN_PROGRESS
        assert "recorded again" in state.logs[-1]["message"]
        assert not runner.done(), "the run goes on"
        assert await queue._complete(job, Outcome({"images": []}))
        state = await queue.state("r1")
        assert state is not None and state.status is Status.COMPLETED
        assert await queue.redis.hget(queue.key("job", "r1"), "webhook_url") == "http://hook"
    finally:
        renewer.cancel()
        runner.cancel()


@pytest.mark.asyncio
async def test_a_request_that_finished_while_redis_lost_its_data_is_recorded(redis_server) -> None:
    """It ended during the outage, so no renewal saw the loss: completing writes it again."""
    queue = queue_on(redis_server.url)
    job = await claimed_one(queue)
    await queue.redis.flushall()
    assert await queue._complete(job, Outcome({"images": []}))
    state = await queue.state("r1")
    assert state is not None and state.status is Status.COMPLETED
    assert [line["message"] for line in state.logs] == [
        "recorded again: redis lost it while it ran",
        "completed",
    ]


@pytest.mark.asyncio
async def test_a_record_that_expired_is_not_written_again(redis_server) -> None:
    """Same data, record gone (its result expired after another replica finished it): a late
    runner here neither revives it nor sends a webhook."""
    queue = queue_on(redis_server.url)
    job = await claimed_one(queue)
    await queue.redis.delete(queue.key("job", "r1"), queue.key("logs", "r1"))
    assert not await queue._complete(job, Outcome({"images": []}))
    assert await queue.state("r1") is None
    runner = asyncio.create_task(asyncio.sleep(30))
    verdict: dict[str, str] = {}
    await asyncio.wait_for(queue._renew(job, runner, verdict), 30)
    assert verdict == {"why": "lost"}
    assert await queue.state("r1") is None


@pytest.mark.asyncio
async def test_submit_and_complete_retried_after_a_lost_answer_count_once(redis_server) -> None:
    """The client retries a command whose answer it did not get (a timeout): the retry finds
    the work done, queues nothing twice, and still reports the completion as this replica's
    (so its webhook is sent)."""
    queue = queue_on(redis_server.url)
    await queue._check_epoch()
    for _ in range(2):
        await queue._enqueue("r1", REQUEST, "http://x", None)
    assert await queue.redis.lrange(queue.waiting_key, 0, -1) == ["r1"]
    assert len(await queue.redis.lrange(queue.key("logs", "r1"), 0, -1)) == 1
    job = await queue._claim()
    assert job is not None
    assert await queue._complete(job, Outcome({"images": []}))
    assert await queue._complete(job, Outcome({"images": []}))
    other = queue_on(redis_server.url)  # another consumer's late completion is still refused
    assert not await other._complete(job, Outcome({"images": []}))


@pytest.mark.asyncio
async def test_a_result_is_recorded_once_redis_is_back(redis_server) -> None:
    """Redis SIGKILLed while a request runs, restarted with its AOF: the result still lands."""
    queue = queue_on(redis_server.url)
    await queue._enqueue("r1", REQUEST, "http://x", None)
    job = await queue._claim()
    assert job is not None
    await asyncio.to_thread(redis_server.kill)
    completing = asyncio.create_task(queue._complete(job, Outcome({"images": []})))
    await asyncio.sleep(1.0)
    assert not completing.done()
    await asyncio.to_thread(redis_server.start)
    assert await asyncio.wait_for(completing, 60)
    state = await queue.state("r1")
    assert state is not None and state.status is Status.COMPLETED


def test_webhook_retry_schedule_is_the_documented_one() -> None:
    assert retry_delays(WebhookSettings()) == [1.0, 2.0, 4.0, 8.0]
    assert retry_delays(WebhookSettings(attempts=3, first_backoff_s=0.5)) == [0.5, 1.0]
    assert retry_delays(WebhookSettings(attempts=1)) == []


@pytest.mark.asyncio
async def test_a_webhook_to_a_receiver_that_stays_down_is_given_up_logged_and_counted(
    caplog,
) -> None:
    settings = WebhookSettings(allow_private_urls=True, attempts=3, first_backoff_s=0.01)
    before = sample(metrics.WEBHOOKS, "given_up")
    url = f"http://127.0.0.1:{free_port()}/hook"
    assert not await deliver_webhook(url, "r1", {"images": []}, False, settings)
    assert sample(metrics.WEBHOOKS, "given_up") == before + 1
    assert caplog.text.count("attempt=") == 3
    assert "gave up after 3 attempts" in caplog.text


def test_an_upload_to_an_s3_store_that_is_down_ends_in_503(monkeypatch) -> None:
    credentials = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    for name, value in {**credentials, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    store = S3OutputStore("s3://outputs/x", 60, endpoint_url=f"http://127.0.0.1:{free_port()}")
    before = sample(metrics.OUTPUT_STORE_FAILURES, "s3")
    with pytest.raises(RequestFailed) as caught:  # after its bounded retries (pytest's timeout)
        store.put(b"\x89PNG", "image/png", "png")
    assert_unavailable(caught.value)
    assert sample(metrics.OUTPUT_STORE_FAILURES, "s3") == before + 1


def test_the_redis_output_store_away_is_503() -> None:
    store = RedisOutputStore(connect(unreachable_url()), "t", 60, 1 << 20)
    with pytest.raises(RequestFailed) as caught:
        store.put(b"data", "image/png", "png")
    assert_unavailable(caught.value)
    with pytest.raises(RequestFailed) as caught:
        store.get("missing.png")
    assert_unavailable(caught.value)
