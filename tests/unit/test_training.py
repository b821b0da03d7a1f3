"""The one trainer (issue 12): records back into learner calls, repeats dropped, and a trainer
that crashes resumes its published lineage at that version's offset: nothing it learnt after
the version is forgotten, nothing is learnt twice (memory adapters: ``ListSource`` for the
topic, ``MemoryStateStore`` for the published versions)."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
import pytest

from streamscore import metrics
from streamscore.adapters.memory import ListSource, MemoryGroup, MemoryStateStore
from streamscore.config import Settings
from streamscore.core.inputs import MODEL_INPUTS
from streamscore.core.lineage import ServedLineage
from streamscore.core.models import Models
from streamscore.core.population import Observation
from streamscore.core.records import TOPIC_TRAINING, TrainingRecord, record_id
from streamscore.core.scorer import Scorer
from streamscore.core.segments import RfmScorer
from streamscore.core.trainer import Trainer
from streamscore.core.training_records import (
    RecentIds,
    TrainingOutbox,
    UnreadableRecordError,
    customer_record,
    decode,
    label_record,
    population_record,
)
from streamscore.core.values import (
    CustomerObservation,
    LabelKind,
    PopulationSample,
    TrainingExample,
)
from streamscore.model_checkpoints import BLOB, HEAD, LineageStore
from streamscore.ports import SourceRecord
from streamscore.training import TrainerLoop

DAY = 86_400_000
SETTINGS = Settings(metrics_port=0, checkpoint_key="secret")


def example(i: int, kind: LabelKind = LabelKind.CHURN) -> TrainingExample:
    """The i-th label of a made-up stream: inputs that vary, so each one moves the model."""
    inputs = {**dict.fromkeys(MODEL_INPUTS, 0.0), "x": float(i % 5), "t_x": 10.0 + i % 30}
    inputs |= {"T": 60.0, "px": float(i % 3), "pt_x": 5.0 + i % 20, "orders": 1.0 + i % 4}
    inputs |= {"mean_order": 20.0 + i % 7, "carts": float(i % 2)}
    return TrainingExample(
        kind=kind,
        inputs=inputs,
        label=float(i % 3 == 0) if kind is LabelKind.CHURN else float(i % 50),
        predicted=0.2 + (i % 7) / 10,
        baseline=None if kind is LabelKind.CHURN else 12.0,
        snapshot_ms=i * DAY,
        label_ms=(i + 14) * DAY,
        weight=1.0 + i % 2,
        orders=math.nan if kind is LabelKind.CHURN else float(i % 3),
        btyd=0.4,
        id=record_id("label", f"u{i}", i * DAY, kind.value),
    )


def calls(n: int) -> list[dict[str, Any]]:
    """n labels of both models with a customer and an RFM sample between them."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.append(label_record(example(i, LabelKind.CHURN if i % 4 else LabelKind.VALUE)))
        out.append(
            population_record(
                PopulationSample(i % 40, i % 6, 10.0 * i, id=record_id("rfm", f"u{i}", i))
            )
        )
        inputs = tuple(example(i).inputs[name] for name in MODEL_INPUTS)
        out.append(customer_record(CustomerObservation(1000 + i % 9, inputs, i * DAY)))
    return out


def topic(values: list[dict[str, Any]], group: MemoryGroup) -> ListSource:
    return ListSource(
        [SourceRecord(TOPIC_TRAINING, 0, i, orjson.dumps(v)) for i, v in enumerate(values)],
        topic=TOPIC_TRAINING,
        group=group,
    )


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def loop_on(
    source: ListSource, store: MemoryStateStore, *, window: int = 1000, every_s: float = 1.0
) -> tuple[TrainerLoop, Clock]:
    clock = Clock()
    loop = TrainerLoop(
        source,
        LineageStore(SETTINGS, store),
        lambda: Trainer(Models(SETTINGS.model_params())),
        window=window,
        publish_every_s=every_s,
        max_records=7,
        clock=clock,
    )
    return loop, clock


def weights(trainer: Trainer) -> tuple[Any, ...]:
    return (
        dict(trainer.models.churn.weights),
        dict(trainer.models.value.weights),
        trainer.models.churn_learnt,
        trainer.models.value_learnt,
        trainer.quality.churn.loss_sum,
        trainer.quality.value.abs_err,
    )


def uninterrupted(values: list[dict[str, Any]]) -> Trainer:
    """What one trainer learns from ``values`` without a crash (the reference)."""
    loop, _ = loop_on(topic(values, MemoryGroup()), MemoryStateStore())
    loop.drain()
    assert loop.trainer is not None
    return loop.trainer


# -- records ----------------------------------------------------------------------------------


def test_every_learner_call_survives_its_record() -> None:
    for ex in (example(3, LabelKind.VALUE), example(4)):
        rid, back = decode(orjson.loads(orjson.dumps(label_record(ex))))
        assert rid == ex.id and isinstance(back, TrainingExample)
        assert label_record(back) == label_record(ex)  # NaN (churn's orders) as null
    sample = PopulationSample(3.5, 2.0, 99.0, id="ab" * 16)
    assert decode(population_record(sample)) == (sample.id, sample)
    obs = CustomerObservation(
        12345, tuple(float(i) for i in range(len(MODEL_INPUTS))), 7 * DAY, partition=3
    )
    assert decode(orjson.loads(orjson.dumps(customer_record(obs))))[1] == obs
    older = {k: v for k, v in customer_record(obs).items() if k != "partition"}
    assert decode(older)[1].partition == -1  # written before partitions were recorded
    for record in (label_record(example(3)), population_record(sample), customer_record(obs)):
        TrainingRecord.model_validate(orjson.loads(orjson.dumps(record)))  # the topic's schema
        assert "user_id" not in record


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"type": "label"}, "KeyError"),
        ({**label_record(example(1)), "schema_id": "0123456789ab"}, "is unknown"),
        ({**label_record(example(1)), "inputs": [1.0]}, "1 inputs"),
        ({**label_record(example(1)), "v": 99}, "newer than v1"),
        ({**population_record(PopulationSample(1, 1, 1)), "type": "gift"}, "unknown record"),
        ({**population_record(PopulationSample(1, 1, 1)), "spend": "12"}, "expected a number"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_a_record_this_version_cannot_read_says_why(record: Any, why: str) -> None:
    with pytest.raises(UnreadableRecordError, match=why):
        decode(record)


def test_the_outbox_publishes_one_record_per_call_and_asks_the_served_sample() -> None:
    served = ServedLineage(Models(), RfmScorer())
    outbox = TrainingOutbox(served)
    outbox.learn(example(1))
    outbox.observe(PopulationSample(1.0, 2.0, 3.0, id="cd" * 16))
    assert [o.topic for o in outbox.take()] == [TOPIC_TRAINING] * 2
    assert outbox.take() == []
    assert outbox.published == {"churn": 1, "rfm": 1}
    # Fill the served population's sample: only hashes below its threshold are asked for.
    pop = served.models.population
    pop.size = 2
    for kh in (10, 20):
        pop.observe(kh, Observation(1, 1, 2, 1, 1, 1, 10), DAY)
    assert outbox.wants(15) and not outbox.wants(25)


# -- the loop ---------------------------------------------------------------------------------


def test_repeats_within_the_window_are_dropped_and_labels_learnt_once() -> None:
    values = calls(40)
    labels = [v for v in values if v["type"] == "label"]
    # A scorer that crashed after flushing redoes a batch: the same records again, later.
    redone = values[30:45]
    stream = values[:60] + redone + values[60:]
    trainer = uninterrupted(stream)
    assert trainer.models.churn_learnt + trainer.models.value_learnt == len(labels)
    assert trainer.quality.churn.count + trainer.quality.value.count == len(labels)
    assert weights(trainer) == weights(uninterrupted(values))


def test_a_repeat_beyond_the_window_is_learnt_again() -> None:
    # The bound is real: the window holds the last N label and RFM ids, no more.
    values = calls(10)
    stream = values + values[:3]  # the first label again, 29 records later (20 windowed)
    loop, _ = loop_on(topic(stream, MemoryGroup()), MemoryStateStore(), window=5)
    loop.drain()
    assert loop.trainer is not None
    assert loop.trainer.models.churn_learnt + loop.trainer.models.value_learnt == 11
    assert loop.stats.duplicates == 0


@pytest.mark.parametrize("crash_after_polls", [2, 4, 6, 8])
def test_a_crashed_trainer_resumes_its_published_version_at_its_offset(
    crash_after_polls: int,
) -> None:
    """Trainer A publishes every other poll and dies (no final publish) with learning it has
    not published (before its first version, with 2); trainer B (another process, the same
    group) restores A's last version and seeks to its offset, not to the group's commit. It
    ends with the uninterrupted lineage exactly."""
    values = calls(25)
    stream = values[:40] + values[20:30] + values[40:]  # a redone batch in the middle
    group, store = MemoryGroup(), MemoryStateStore()
    a, clock = loop_on(topic(stream, group), store)
    for i in range(crash_after_polls):
        clock.t = float(i // 2)  # publishes at the 3rd, 5th, 7th poll
        a.run_once()
    assert a.trainer is not None and a.unpublished, "learnt past its last version"
    assert a.version == crash_after_polls // 2 - 1
    resumed_at = store_offset(store) if a.version else 0
    assert resumed_at < a.next_offset
    # A's process dies: no close, no publish, and its last offset commits (asynchronous in
    # Kafka) are lost with it. B gets the partition.
    group.committed.pop(0, None)
    b, _ = loop_on(topic(stream, group), store)
    b.drain()
    assert b.trainer is not None
    assert b.stats.records == len(stream) - resumed_at, "read from A's last version on"
    distinct = {v["id"] for v in stream if v["type"] == "label"}
    assert b.trainer.models.churn_learnt + b.trainer.models.value_learnt == len(distinct)
    assert weights(b.trainer) == weights(uninterrupted(stream))
    assert b.version > a.version and store_offset(store) == len(stream)


def store_offset(store: MemoryStateStore) -> int:
    head = store.get_blob(HEAD)
    assert head is not None
    return int(orjson.loads(head)["offset"])


def test_a_trainer_that_finds_another_publisher_gives_way_and_resumes_the_newest() -> None:
    values = calls(12)
    group, store = MemoryGroup(), MemoryStateStore()
    a, clock_a = loop_on(topic(values, group), store)
    a.run_once()
    clock_a.t = 1.0
    a.run_once()  # publishes version 1
    b, _clock_b = loop_on(topic(values, group), store)
    b.drain()  # a second owner (A lost its session without noticing): publishes version 2
    published = b.version
    clock_a.t = 2.0
    a.run_once()  # its publish is fenced: it resumes B's version and seeks to its offset
    assert a.stats.fenced == 1
    assert a.version == published and a.next_offset == len(values)
    assert a.trainer is not None and weights(a.trainer) == weights(uninterrupted(values))


def test_unreadable_records_are_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    values = calls(5)
    bad = {**values[0], "schema_id": "fedcba987654", "id": "ff" * 16}
    group = MemoryGroup()
    source = topic(values[:3], group)
    source.produce(0, orjson.dumps(bad))
    source.produce(0, b"not json")
    for v in values[3:]:
        source.produce(0, orjson.dumps(v))
    loop, _ = loop_on(source, MemoryStateStore())
    loop.drain()
    assert loop.stats.unreadable == 2
    assert "cannot learn" in caplog.text
    assert loop.trainer is not None and weights(loop.trainer) == weights(uninterrupted(values))


def test_recent_ids_survive_their_checkpoint_and_keep_the_newest_when_shrunk() -> None:
    ids = RecentIds(4)
    rid = [record_id("label", f"u{i}") for i in range(6)]
    for r in rid:
        assert ids.add(r)
    assert not ids.add(rid[5]) and ids.add(rid[0])  # 0 had fallen out of the window
    again = RecentIds.from_state(2, ids.state())
    assert len(again) == 2
    assert not again.add(rid[0]) and again.add(rid[4])


def test_an_unusable_version_is_relearnt_from_the_start_and_numbered_after_it() -> None:
    """on_bad_checkpoint=fresh and a tampered version: the next trainer learns the whole topic
    again with fresh models, and its first version is numbered after the refused one, so
    every scorer sees a newer head and loads it."""
    values = calls(10)
    group, store = MemoryGroup(), MemoryStateStore()
    a, _ = loop_on(topic(values, group), store)
    a.drain()
    refused = a.version
    blob = store.get_blob(BLOB)
    assert blob is not None and refused > 0
    store.put_blob(BLOB, blob[:-4] + bytes(b ^ 0x55 for b in blob[-4:]))
    fresh = Settings(metrics_port=0, checkpoint_key="secret", on_bad_checkpoint="fresh")
    b = TrainerLoop(
        topic(values, MemoryGroup()),
        LineageStore(fresh, store),
        lambda: Trainer(Models(fresh.model_params())),
        window=1000,
        publish_every_s=0.0,
    )
    b.drain()
    assert b.stats.records == len(values), "learnt again from offset 0"
    assert b.version == refused + 1 and store_offset(store) == len(values)
    assert b.trainer is not None and weights(b.trainer) == weights(uninterrupted(values))


def test_how_far_the_lineage_has_learnt_in_event_time_reaches_every_scorer() -> None:
    """The newest label time learnt travels with each version and survives a resume; a scorer
    reports its watermark's distance from it (what grows while a backlog is caught up)."""
    values = calls(12)
    newest = max(v["label_ms"] for v in values if v["type"] == "label")
    store = MemoryStateStore()
    a, _ = loop_on(topic(values, MemoryGroup()), store)
    a.drain()
    assert a.trainer is not None and a.trainer.labels_until_ms == newest
    lineage = LineageStore(SETTINGS, store)
    restored = lineage.restore()
    assert restored is not None and restored.trainer.labels_until_ms == newest
    published = lineage.load()
    assert published is not None and published.summary["labels_until_ms"] == newest

    served = ServedLineage(Models(SETTINGS.model_params()), RfmScorer())
    served.replace(
        published.models, published.rfm, version=published.version, writer=published.writer,
        created_unix=published.created_unix, summary=published.summary,
    )  # fmt: skip
    outbox = TrainingOutbox(served)
    watch = metrics.ScorerWatch(
        Scorer(SETTINGS.scoring(), served, outbox), outbox, served, logging.getLogger("test")
    )
    watch.update(1.0, newest + 3 * DAY)
    lag = metrics.REGISTRY.get_sample_value("streamscore_model_version_event_lag_seconds")
    assert lag == 3 * DAY / 1000
