"""One model lineage for several ``streamscore run`` processes on the real broker and Redis.

Three scorers share a consumer group; the process that trains is killed with SIGKILL
mid-stream and restarted, a third scorer joins later, and a scorer that does not train is
killed and restarted too. At the end the published lineage has learnt every label the
scorers resolved exactly once (as many as an uninterrupted one-process run resolves, none
lost with a killed process, none learnt twice from a redone batch), every process scores
with the lineage's last version, and every score names a version of that lineage.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from devstack import GroupProgress, consume, free_port, produce
from streamscore.config import Settings
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event

from .conftest import SHARED
from .helpers import (
    assert_learnt_once,
    assert_same_as_uninterrupted,
    env_for,
    joined,
    kill,
    published_lineage,
    scrape,
    settings_for,
    start_scorer,
    stop,
    wait_for,
    wait_until_committed,
    wait_until_published_all,
    wait_until_settled,
)

pytestmark = pytest.mark.integration


def _gauge(port: int, metric: str) -> float | None:
    try:
        return scrape(port, metric).get("")
    except OSError:  # not serving yet (starting) or any more
        return None


class Scorers:
    """The test's ``streamscore run`` processes, each with its own metrics port and log."""

    def __init__(self, names: dict[str, str], tmp_path: Path) -> None:
        self.names = names
        self.tmp_path = tmp_path
        self.procs: dict[Path, subprocess.Popen[bytes]] = {}
        self.ports: dict[Path, int] = {}
        self.scoring: set[Path] = set()  # of ``run``, not ``train``
        group = names["kafka_group_id"]
        self.progress = GroupProgress(SHARED, group, names["input_topic"])
        self.training = GroupProgress(SHARED, f"{group}-trainer", names["training_topic"])

    def start(self, name: str, command: str = "run", **extra: object) -> Path:
        log = self.tmp_path / f"{name}.log"
        port = free_port()
        env = env_for(
            self.names,
            batch_max_records=200,
            session_timeout_ms=6000,
            checkpoint_interval_seconds=1,
            model_staleness_seconds=1,
            metrics_port=port,
            **extra,
        )
        self.procs[log] = start_scorer(env, log, command)
        self.ports[log] = port
        if command == "run":
            self.scoring.add(log)
        return log

    def kill(self, log: Path) -> None:
        kill(self.procs.pop(log))
        del self.ports[log]
        self.scoring.discard(log)

    def trainer(self) -> Path | None:
        """The live process whose trainer thread trains now (its metrics say so)."""
        active = [
            log
            for log, port in self.ports.items()
            if _gauge(port, "streamscore_trainer_active") == 1
        ]
        return active[0] if len(active) == 1 else None

    def versions(self) -> set[float | None]:
        """The model version each live ``run`` process scores with (None: no answer)."""
        return {_gauge(self.ports[log], "streamscore_model_version") for log in self.scoring}

    def stop_all(self) -> list[int]:
        """Stop every process (SIGTERM); their exit codes."""
        self.progress.close()
        self.training.close()
        codes = [stop(p) for p in self.procs.values()]
        self.procs.clear()
        return codes


def _wait_past(progress: GroupProgress, share: float, scorers: Scorers) -> None:
    wait_for(f"{share:.0%} committed", lambda: progress.fraction() >= share, 120, scorers.procs,
             interval_s=0.01)  # fmt: skip
    assert progress.fraction() < 1.0, "the step came after the last commit: more input needed"


def _wait_for_learning(settings: Settings, scorers: Scorers, labels: int) -> None:
    """Until the published lineage has learnt ``labels`` labels and more records wait in
    training-examples: a trainer killed now holds learning a successor must not lose."""

    def learnt_and_more_to_learn() -> bool:
        head, published = published_lineage(settings)
        return (
            head is not None
            and published is not None
            and published.models.churn_learnt + published.models.value_learnt >= labels
            and head.offset < scorers.training.ends()[0]
        )

    wait_for(f"a published version with {labels} labels learnt", learnt_and_more_to_learn,
             120, scorers.procs, interval_s=0.2)  # fmt: skip


def _wait_until_learnt_and_followed(settings: Settings, scorers: Scorers) -> None:
    """Until the input is committed and settled, the trainer has published a version of the
    whole of training-examples, and every ``run`` process scores with it."""
    names = scorers.names
    wait_until_committed(names["kafka_group_id"], names["input_topic"], scorers.procs, 180)
    wait_until_settled(settings, scorers.procs)
    wait_until_published_all(settings, scorers.training, scorers.procs, 60)
    head, _ = published_lineage(settings)
    assert head is not None
    wait_for(f"every scorer on version {head.version}",
             lambda: scorers.versions() == {head.version}, 30, scorers.procs,
             interval_s=0.2)  # fmt: skip


def test_scorers_killed_and_added_mid_stream_keep_one_lineage_learning_each_label_once(
    names: dict[str, str], tmp_path: Path
) -> None:
    sim = ShopSimulator(SimulationConfig(users=400, days=90, seed=21))
    events = [
        (str(e["user_id"]).encode(), encode_event(e)) for e in sim.events() if isinstance(e, dict)
    ]
    assert len(events) > 40_000
    topic = names["input_topic"]
    settings = settings_for(names, checkpoint_key="integration-test-key")
    scorers = Scorers(names, tmp_path)
    progress = scorers.progress
    killed: list[str] = []
    try:
        a, b = scorers.start("a"), scorers.start("b")
        wait_for("both scorers to get partitions", lambda: joined(a) and joined(b), 60,
                 scorers.procs)  # fmt: skip
        wait_for("a trainer", lambda: scorers.trainer() is not None, 60, scorers.procs)
        first = scorers.trainer()
        assert first is not None
        produce(SHARED, topic, events)

        # The process that trains dies mid-stream, with learning published and more to
        # learn; another takes the partition over. (100 labels: with 200, a run on a loaded
        # machine killed it only once 81% of the input was committed.)
        _wait_for_learning(settings, scorers, 100)
        at = progress.fraction()
        assert at < 0.8, f"the trainer's kill came late: {at:.0%} of the input committed"
        scorers.kill(first)
        killed.append(f"trainer {first.stem} at {at:.0%}")
        scorers.start(f"{first.stem}-restarted")
        # A third scorer joins mid-stream.
        _wait_past(progress, at + 0.05, scorers)
        scorers.start("c")
        # A scorer that does not train dies too (its redone batch republishes records).
        _wait_past(progress, at + 0.12, scorers)
        wait_for("a trainer again", lambda: scorers.trainer() is not None, 60, scorers.procs)
        trainer = scorers.trainer()
        other = next(log for log in scorers.procs if log != trainer)
        scorers.kill(other)
        killed.append(f"scorer {other.stem}")
        scorers.start(f"{other.stem}-restarted")

        _wait_until_learnt_and_followed(settings, scorers)
    finally:
        codes = scorers.stop_all()
    assert codes == [0] * len(codes), codes
    print(f"killed: {killed}")

    # States: those of one uninterrupted process, every event counted once.
    assert_same_as_uninterrupted(names)

    # The lineage learnt each resolved label exactly once.
    published = assert_learnt_once(settings, names)
    got = published.models
    assert got.churn_learnt > 500 and got.value_learnt > 500

    # Every score names a version of this lineage (g0: before its first publish).
    prefix, _, _ = got.version.rpartition("-g")
    pattern = re.compile(rf"{re.escape(prefix)}-g(\d+)")
    seen: Counter[int] = Counter()
    for score in consume(SHARED, names["scores_topic"]):
        match = pattern.fullmatch(str(score["model_version"]))
        assert match is not None, score["model_version"]
        seen[int(match[1])] += 1
    assert max(seen) <= published.version
    assert len(seen) > 3, f"scores came from too few versions to show following: {seen}"


def test_scorers_that_do_not_train_follow_a_separate_trainer_killed_mid_stream(
    names: dict[str, str], tmp_path: Path
) -> None:
    """Two ``run`` with run_trainer=false and one ``streamscore train``, killed -9 once it has
    published learnt labels with more to learn, and restarted: only the trainer trains, the
    lineage learns each label once, and both scorers end on its last version."""
    sim = ShopSimulator(SimulationConfig(users=250, days=75, seed=22))
    events = [
        (str(e["user_id"]).encode(), encode_event(e)) for e in sim.events() if isinstance(e, dict)
    ]
    topic = names["input_topic"]
    settings = settings_for(names, checkpoint_key="integration-test-key")
    scorers = Scorers(names, tmp_path)
    try:
        a = scorers.start("a", run_trainer="false")
        b = scorers.start("b", run_trainer="false")
        t = scorers.start("trainer", "train")
        wait_for("both scorers to get partitions", lambda: joined(a) and joined(b), 60,
                 scorers.procs)  # fmt: skip
        wait_for("the trainer to train", lambda: scorers.trainer() == t, 60, scorers.procs)
        produce(SHARED, topic, events)
        _wait_for_learning(settings, scorers, 100)
        scorers.kill(t)
        t = scorers.start("trainer-restarted", "train")
        _wait_until_learnt_and_followed(settings, scorers)
    finally:
        codes = scorers.stop_all()
    assert codes == [0] * len(codes), codes
    for log in (a, b):
        text = log.read_text()
        assert "not training here (run_trainer=false)" in text
        assert "training: this process owns" not in text
    assert "training: this process owns" in t.read_text()
    assert_same_as_uninterrupted(names)
    assert_learnt_once(settings, names)
