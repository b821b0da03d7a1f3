"""Consumers of the output topics, on the real broker: ``streamscore.client``, the example
retention consumer across a SIGKILL, and ``streamscore tail``."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from devstack import GroupProgress
from devstack import produce as produce_to
from devstack.stack import REPO_ROOT
from streamscore.client import ChurnAlert, InvalidRecord, UserScore, iter_alerts, iter_scores
from streamscore.core.records import Reason, record_id
from streamscore.tail import tail

from .conftest import BOOTSTRAP, SHARED
from .helpers import settings_for

pytestmark = pytest.mark.integration
EXAMPLE = REPO_ROOT / "examples" / "retention_actions.py"


def produce(topic: str, records: list[tuple[bytes | None, bytes]]) -> int:
    """Produce to the shared broker."""
    return produce_to(SHARED, topic, records)


def alert(i: int) -> ChurnAlert:
    uid = f"u{i % 97:04d}"
    return ChurnAlert(
        id=record_id("alert", uid, i),
        user_id=uid,
        as_of=f"2026-01-{1 + i % 28:02d}T00:00:00.000Z",
        churn_probability=0.75 + (i % 20) / 100,
        predicted_value=float(i % 300),
        segment="At Risk",
        reasons=[Reason(feature="recency_days", contribution=0.8, value=12.0)],
        recommended_action="reengagement_email",
        model_version="scaled-linear-test-g1",
    )


def keyed(alerts: list[ChurnAlert]) -> list[tuple[bytes | None, bytes]]:
    return [(a.user_id.encode(), a.model_dump_json().encode()) for a in alerts]


def test_iter_alerts_decodes_dedupes_and_commits_only_what_was_handled(
    names: dict[str, str],
) -> None:
    settings = settings_for(names)
    alerts = [alert(i) for i in range(40)]
    produce(names["alerts_topic"], keyed(alerts + alerts[:10]))  # ten sent twice
    everything = names["kafka_group_id"] + "-all"
    with iter_alerts(everything, settings, from_beginning=True, stop_when_idle_s=3) as reader:
        got = list(reader)
        assert reader.duplicates == 10
    assert all(isinstance(a, ChurnAlert) for a in got)
    assert sorted(a.id for a in got) == sorted(a.id for a in alerts)
    progress = GroupProgress(SHARED, everything, names["alerts_topic"])
    try:
        assert progress.fraction() == 1.0  # closing committed what was handled
    finally:
        progress.close()

    group = names["kafka_group_id"] + "-part"
    got = []
    with iter_alerts(group, settings, from_beginning=True, stop_when_idle_s=3) as reader:
        for a in reader:
            got.append(a)
            if len(got) == 25:
                break  # the 25th is never reported handled: its offset is not committed
    # from_beginning again: it applies to each partition the group has not committed yet
    with iter_alerts(group, settings, from_beginning=True, stop_when_idle_s=3) as reader:
        rest = list(reader)
    seen_again = {a.id for a in rest} & {a.id for a in got}
    assert got[-1].id in seen_again
    # Nothing handled comes again, but the second copies of the ten repeated alerts.
    assert seen_again - {got[-1].id} <= {a.id for a in alerts[:10]}
    assert {a.id for a in got} | {a.id for a in rest} == {a.id for a in alerts}


def test_a_record_that_is_not_the_model_is_a_clear_error(names: dict[str, str]) -> None:
    settings = settings_for(names)
    produce(names["scores_topic"], [(b"u1", b'{"id": "x", "user_id": "u1"}')])
    with (
        iter_scores("g-" + names["kafka_group_id"], settings, from_beginning=True) as reader,
        pytest.raises(InvalidRecord, match=r"\[\d\]@0 is not a UserScore"),
    ):
        next(iter(reader))
    skipped = iter_scores(
        "h-" + names["kafka_group_id"],
        settings,
        from_beginning=True,
        on_invalid="skip",
        stop_when_idle_s=2,
    )
    with skipped as reader:
        assert list(reader) == []
    assert UserScore  # the record models are importable from the client


def example(env: dict[str, str], log: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    with out.open("ab") as fp:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--log", str(log), *args],
            env=env,
            stdout=fp,
            stderr=subprocess.STDOUT,
        )


def logged_ids(log: Path) -> list[str]:
    return [orjson.loads(line)["alert_id"] for line in log.read_bytes().splitlines() if line]


def test_retention_example_acts_once_per_alert_across_a_kill(
    names: dict[str, str], tmp_path: Path
) -> None:
    alerts = [alert(i) for i in range(300)]
    produce(names["alerts_topic"], keyed(alerts[:150] + alerts[:30] + alerts[150:]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCORE_")}
    env |= {
        "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP,
        "STREAMSCORE_ALERTS_TOPIC": names["alerts_topic"],
    }
    log, out = tmp_path / "actions.jsonl", tmp_path / "example.out"
    group = ["--group", names["kafka_group_id"], "--from-beginning"]
    first = example(env, log, out, *group, "--delay", "0.02")
    try:
        deadline = time.monotonic() + 90
        # Mid-way through its second poll of 100: ~50 handled alerts are not committed yet.
        while not (log.exists() and len(logged_ids(log)) >= 150):
            assert first.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    before = len(logged_ids(log))
    assert before < 300
    second = example(env, log, out, *group, "--idle-exit", "4")
    assert second.wait(timeout=120) == 0, out.read_text()
    ids = logged_ids(log)
    assert sorted(ids) == sorted(a.id for a in alerts), "every alert acted on exactly once"
    text = out.read_text()
    assert text.count("; skipped") >= 1, "the restart should have met alerts it had acted on"
    assert "300 alerts acted on" in text


def test_tail_prints_one_readable_line_per_record(names: dict[str, str]) -> None:
    settings = settings_for(names)
    produce(names["alerts_topic"], keyed([alert(i) for i in range(5)]))
    buf = io.StringIO()
    assert tail(settings, "churn-alerts", from_beginning=True, limit=3, out=buf) == 0
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    assert all("ALERT churn 0." in line and "-> reengagement_email" in line for line in lines)
    assert all("because recency_days 12.0" in line for line in lines)
