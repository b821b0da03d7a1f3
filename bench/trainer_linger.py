"""``python -m bench.trainer_linger``: the trainer's CPU per training record, by
``batch_linger_ms``, with records arriving in bursts as scorers flush them.

    .venv/bin/python -m bench.trainer_linger [--lingers 0,20,0,20 --seconds 20]

Needs the stack's Kafka and Redis (``STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS``,
``STREAMSCORE_REDIS_URL``). For each linger in turn: a fresh one-partition topic, a
``TrainerRunner`` in this process that owns it, and two producer processes that each send a
burst of 10 RFM samples every 20 ms (about 1,000 records/s, like two scorers at a few
thousand events/s); then process CPU (the consumer's I/O thread included) per record polled,
turns and consumer polls. Topics and keys are deleted afterwards. Figures only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time
import uuid
from typing import Any

import orjson
import redis
from kafka import KafkaProducer

from bench.save_cost import delete_prefix
from devstack.topics import create_topics, delete_topics
from streamscore.adapters.kafka import KafkaSource
from streamscore.config import load_settings
from streamscore.trainer_service import TrainerRunner

BOOTSTRAP = os.environ.get("STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS_URL = os.environ.get("STREAMSCORE_REDIS_URL", "redis://127.0.0.1:6379/0")
CLIENT = {"bootstrap_servers": BOOTSTRAP.split(",")}


def _produce(topic: str, until: float, seed: int) -> None:
    producer = KafkaProducer(acks="all", linger_ms=5, **CLIENT)
    n = 0
    while time.time() < until:
        for _ in range(10):
            record = {
                "v": 1,
                "type": "rfm",
                "id": f"{seed:08x}{n:024x}",
                "days_since_purchase": n % 90,
                "purchases": n % 7,
                "spend": n % 5 * 10.0,
            }
            producer.send(topic, orjson.dumps(record))
            n += 1
        producer.flush()
        time.sleep(0.02)
    producer.close()


def _round(linger_ms: int, seconds: float) -> str:
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-{tag}-training"
    create_topics(CLIENT, {topic: 1})
    settings = load_settings(
        kafka_bootstrap_servers=BOOTSTRAP,
        redis_url=REDIS_URL,
        redis_key_prefix=f"bench-{tag}",
        kafka_group_id=f"bench-{tag}",
        training_topic=topic,
        checkpoint_key="bench-trainer-linger",
        batch_linger_ms=linger_ms,
        metrics_port=0,
    )
    runner = TrainerRunner(settings, threading.Event())
    try:
        source = runner.loop.source
        assert isinstance(source, KafkaSource)
        while not source.owned:
            runner.turn(0.2)
        polls = [0]
        consumer_poll = source.consumer.poll

        def counted(*args: Any, **kwargs: Any) -> Any:
            polls[0] += 1
            return consumer_poll(*args, **kwargs)

        source.consumer.poll = counted
        until = time.time() + seconds + 2
        procs = [multiprocessing.Process(target=_produce, args=(topic, until, i)) for i in range(2)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # the producers are sending
        records = turns = 0
        cpu0, t0 = time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            records += runner.turn(0.2)
            turns += 1
        cpu = time.process_time() - cpu0
        for p in procs:
            p.join()
    finally:
        runner.close()
        delete_topics(CLIENT, [topic])
        client = redis.Redis.from_url(REDIS_URL)
        delete_prefix(client, f"bench-{tag}")
        client.close()
    per_record = cpu / max(records, 1) * 1e6
    return (f"batch_linger_ms {linger_ms:>3}: {records:,} records in {turns:,} turns "
            f"({records / max(turns, 1):.1f} a turn), {polls[0]:,} consumer polls, CPU "
            f"{per_record:.1f} µs/record, {cpu / seconds * 100:.1f} % of a core")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.trainer_linger", description=__doc__)
    p.add_argument("--lingers", default="0,20,0,20", help="batch_linger_ms of each round")
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per round")
    args = p.parse_args()
    for linger in (int(x) for x in args.lingers.split(",")):
        print(_round(linger, args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
