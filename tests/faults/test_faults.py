"""The fault suite's short form (``make chaos`` runs it at full length): every fault injected under
a steady mix over two replicas, its table printed, and what each fault must not do asserted."""

from __future__ import annotations

import pytest

from tests.faults.suite import SHORT, Row, run_suite, table

#: the one fault that loses accepted requests, by design: Redis without persistence
NO_PERSISTENCE = "Redis SIGKILLed, restarted (no persistence)"


@pytest.fixture(scope="module")
def rows(tmp_path_factory, request) -> dict[str, Row]:
    found = run_suite(tmp_path_factory.mktemp("faults"), SHORT)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + table(found))
    return {row.fault: row for row in found}


@pytest.mark.timeout(600)
def test_no_fault_loses_an_accepted_request_or_answers_500(rows) -> None:
    for row in rows.values():
        assert not [what for what in (*row.failed, *row.refused) if what.startswith("500")], row
        assert row.duplicates == 0, row.fault
        if row.fault != NO_PERSISTENCE:
            assert row.lost == 0, (row.fault, row.lost_why)
            assert row.completed > 0 or row.accepted == 0, row.fault


def test_redis_unreachable_at_start_is_not_ready_and_says_why(rows) -> None:
    row = rows["Redis unreachable at start"]
    assert row.facts["alive"], "no crash loop"
    assert row.facts["readiness"] == 503
    assert row.refused == {"503 store_unavailable": 1}
    assert int(row.facts["retry_after"]) >= 1
    assert any("unreachable while starting" in note for note in row.notes)
    assert row.recover_s is not None, "ready once Redis answers"


@pytest.mark.parametrize("fault", ["(AOF, fsync always)", "(no persistence)"])
def test_submits_during_a_redis_outage_get_503_with_retry_after(rows, fault) -> None:
    row = rows[f"Redis SIGKILLed, restarted {fault}"]
    refused = [item for item in row.sent if item.refused is not None]
    assert refused, "the outage was seen by submits"
    assert {item.refused for item in refused} == {"503 store_unavailable"}
    assert all(item.retry_after for item in refused)
    assert row.recover_s is not None


def test_redis_with_aof_loses_nothing_and_sees_no_data_loss(rows) -> None:
    row = rows["Redis SIGKILLed, restarted (AOF, fsync always)"]
    assert row.lost == 0
    assert set(row.facts["backlog"]) == {"ok"}, row.facts
    assert row.facts["data_lost_seen"] == [0, 0]
    assert row.webhooks == row.queued_ended


def test_redis_without_persistence_loses_what_waited_and_every_replica_says_so(rows) -> None:
    row = rows[NO_PERSISTENCE]
    assert all(seen >= 1 for seen in row.facts["data_lost_seen"]), row.facts
    # the long jobs running at the kill are recorded again and finish; those waiting are gone,
    # and their status says so (404), nothing hangs
    backlog = row.facts["backlog"]
    assert backlog[:2] == ["ok", "ok"], backlog
    assert all(outcome.startswith("404") for outcome in backlog[2:]), backlog
    assert set(row.lost_why) <= {"404 for 5 s"}, row.lost_why
    assert row.webhooks == row.queued_ended


def test_a_partitioned_replica_loses_its_lease_and_its_late_result(rows) -> None:
    row = rows["replica B partitioned from Redis"]
    assert row.facts["long_job"] == "ok"
    assert row.facts["long_job_webhooks"] == 1
    assert row.facts["late_result_dropped"]
    assert row.webhooks == row.queued_ended


def test_s3_down_ends_uploads_in_a_clear_status_and_webhook(rows) -> None:
    row = rows["S3 output store down during uploads"]
    assert set(row.failed) == {"failed store_unavailable"}, row.failed
    failed = row.failed["failed store_unavailable"]
    assert row.facts["their_webhooks_say_error"] == failed
    assert row.facts["store_failures_counted"] >= failed
    assert row.webhooks == row.queued_ended


def test_a_webhook_receiver_down_past_the_retry_window(rows) -> None:
    row = rows["webhook receiver down (longer than the retry window)"]
    assert row.facts["given_up"] >= 1
    assert row.webhooks + row.facts["given_up"] == row.queued_ended
    assert row.facts["fetchable"] == row.facts["missed"]


def test_a_replica_killed_mid_request_loses_nothing(rows) -> None:
    row = rows["replica A SIGKILLed mid-request"]
    assert row.facts["long_job"] == "ok"
    assert row.facts["long_job_webhooks"] == 1
    assert row.webhooks == row.queued_ended
