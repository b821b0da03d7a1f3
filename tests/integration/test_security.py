"""Security settings on real servers (issue 5, item 5).

- Kafka SASL/SCRAM-SHA-256: a private broker that only speaks SASL_PLAINTEXT; the scorer
  authenticates and scores; a wrong password stops it with an error naming the credential
  settings; no password ever reaches its output, even at DEBUG.
- Redis AUTH and ACL users: a private redis-server with ``requirepass`` and ACL users; right
  credentials work, wrong or missing ones (or missing ACL permissions) are clear errors that
  never echo the secret.
- TLS: a private broker with only an SSL listener and a private redis-server with only a TLS
  port, both on a throw-away self-signed certificate and both requiring client certificates;
  the scorer verifies both, presents its own, and scores; a missing client certificate or a
  CA that cannot verify Redis is a clear start-up error.
- The metrics endpoint listens on loopback only, by default.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import redis

from devstack import (
    GroupProgress,
    RedisServer,
    TlsFiles,
    consume,
    free_port,
    make_tls_files,
    produce,
    topic_settings,
)
from streamscore.adapters.redis_store import RedisStateStore
from streamscore.config import Settings, load_settings
from streamscore.errors import ConfigError
from streamscore.simulator import ShopSimulator, SimulationConfig, encode_event
from tests.conftest import MakeBroker, MakeRedis

from .helpers import joined, scorer_env, scrape, start_scorer, wait_for

pytestmark = pytest.mark.integration

KAFKA_USER, KAFKA_PASSWORD = "streamscore", "scram-Pa55-for-tests-7f3a"
WRONG_KAFKA_PASSWORD = "not-the-scram-password-91c2"
REDIS_ADMIN_PASSWORD = "redis-admin-pw-5d1e"
REDIS_USER, REDIS_PASSWORD = "scorer", "redis-scorer-pw-a8b0"
SECRETS = (KAFKA_PASSWORD, WRONG_KAFKA_PASSWORD, REDIS_ADMIN_PASSWORD, REDIS_PASSWORD)
# A scorer's Redis user: everything on its own keys, plus SCRIPT LOAD / EVALSHA and MEMORY.
SCORER_ACL = f"{REDIS_USER} on >{REDIS_PASSWORD} ~* &* +@all"
READONLY_ACL = "reader on >reader-pw-0c4e ~* +get +ping +hget"


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, "a password appears in the output"


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.add(addr)
    return found


def test_metrics_bind_to_loopback_by_default() -> None:
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    assert load_settings().metrics_host == "127.0.0.1"


def test_secrets_never_print() -> None:
    s = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username=KAFKA_USER,
        kafka_sasl_password=KAFKA_PASSWORD,
        redis_password=REDIS_PASSWORD,
        checkpoint_key=REDIS_ADMIN_PASSWORD,
        checkpoint_old_keys={"k0": WRONG_KAFKA_PASSWORD},
    )
    _assert_no_secret(repr(s) + str(s) + str(s.model_dump()))


@pytest.mark.slow
def test_kafka_sasl_scram_authenticates_and_a_wrong_password_is_a_clear_error(
    stack: None, make_broker: MakeBroker, make_redis: MakeRedis, tmp_path: Path
) -> None:
    """Against a SASL_PLAINTEXT/SCRAM-SHA-256 broker, with Redis behind an ACL user."""
    tag = f"s{os.getpid()}"
    topics = topic_settings(tag)
    events = list(ShopSimulator(SimulationConfig(users=40, days=20, seed=21)).events())
    users = {str(e["user_id"]) for e in events if isinstance(e, dict)}
    metrics_port = free_port()
    broker = make_broker(sasl_users={KAFKA_USER: KAFKA_PASSWORD}, plain=True)
    rds = make_redis(password=REDIS_ADMIN_PASSWORD, acl_users=[SCORER_ACL])
    admin = broker.client_config()  # the broker's own SCRAM user
    broker.create_topics([*topics.values(), f"{tag}-idle"])
    produce(
        admin,
        topics["input_topic"],
        [(str(e["user_id"]).encode(), encode_event(e)) for e in events if isinstance(e, dict)],
    )
    common = {
        **topics,
        "kafka_bootstrap_servers": broker.bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": KAFKA_USER,
        "redis_url": rds.url,
        "redis_username": REDIS_USER,
        "redis_password": REDIS_PASSWORD,
        "checkpoint_key": "ckpt-key",
        "batch_max_records": 500,
        "log_level": "DEBUG",
        "kafka_log_level": "DEBUG",  # kafka-python's request log, where SASL bytes would be
        "metrics_port": 0,
    }
    # The refused login takes kafka-python's bootstrap timeout (30 s) to surface: start it
    # first and let the good scorer work meanwhile.
    bad_log = tmp_path / "wrong-password.log"
    bad = start_scorer(
        scorer_env(**common, kafka_sasl_password=WRONG_KAFKA_PASSWORD, kafka_group_id="bad"),
        bad_log,
    )
    # SASL/PLAIN sends the password in clear: kafka-python's DEBUG log must not show it.
    plain_log = tmp_path / "plain.log"
    plain = start_scorer(
        scorer_env(
            **{**common, "input_topic": f"{tag}-idle", "kafka_sasl_mechanism": "PLAIN"},
            kafka_sasl_password=KAFKA_PASSWORD,
            kafka_group_id="plain",
        ),
        plain_log,
    )
    good_log = tmp_path / "scorer.log"
    good = start_scorer(
        scorer_env(**{**common, "metrics_port": metrics_port}, kafka_sasl_password=KAFKA_PASSWORD),
        good_log,
    )
    progress = GroupProgress(admin, "streamscore", topics["input_topic"])
    try:
        wait_for("everything committed", lambda: progress.fraction() >= 1.0, 90,
                 {good_log: good})  # fmt: skip
        # The metrics endpoint answers on loopback and listens nowhere else.
        assert scrape(metrics_port, "streamscore_events_processed_total")
        assert _listening(metrics_port) == {"0100007F"}, _listening(metrics_port)
        wait_for("the PLAIN scorer to join", lambda: joined(plain_log), 90, {plain_log: plain})
    finally:
        progress.close()
        good.terminate()
        plain.terminate()
        good_code = good.wait(timeout=30)
        plain_code = plain.wait(timeout=30)
    scores = consume(admin, topics["scores_topic"])
    bad_code = bad.wait(timeout=90)
    good_text = good_log.read_text()
    assert good_code == 0, good_text[-4000:]
    assert "Authenticated as streamscore via SASL / SCRAM-SHA-256" in good_text
    assert {s["user_id"] for s in scores} == users
    plain_text = plain_log.read_text()
    assert plain_code == 0, plain_text[-4000:]
    assert "Authenticated as streamscore via SASL / Plain" in plain_text
    assert "auth_bytes=<redacted>" in plain_text  # the DEBUG lines are there, minus the secret
    _assert_no_secret(plain_text)
    bad_text = bad_log.read_text()
    assert bad_code == 2, bad_text[-4000:]
    assert (
        f"streamscore: configuration error: Kafka at {broker.bootstrap} refused our SASL login"
        in bad_text
    ), bad_text[-3000:]
    assert (
        "check STREAMSCORE_KAFKA_SASL_USERNAME, STREAMSCORE_KAFKA_SASL_PASSWORD and "
        "STREAMSCORE_KAFKA_SASL_MECHANISM" in bad_text
    )
    _assert_no_secret(good_text)
    _assert_no_secret(bad_text)


def test_a_sasl_bootstrap_timeout_against_a_listening_broker_names_the_credentials() -> None:
    """kafka-python may see only the connection a broker closes on a refused login."""
    from kafka.errors import KafkaTimeoutError

    from streamscore.adapters.kafka_client import unreachable_error

    sasl = {
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-256",
        "kafka_sasl_username": KAFKA_USER,
        "kafka_sasl_password": KAFKA_PASSWORD,
    }
    timeout = KafkaTimeoutError("Unable to bootstrap")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        where = f"127.0.0.1:{listening.getsockname()[1]}"
        message = str(
            unreachable_error(load_settings(kafka_bootstrap_servers=where, **sasl), timeout)
        )
        assert message.startswith(f"Kafka at {where} refused our SASL login (it accepts conn")
        assert "STREAMSCORE_KAFKA_SASL_PASSWORD" in message
        plain = str(unreachable_error(load_settings(kafka_bootstrap_servers=where), timeout))
        assert plain.startswith(f"cannot reach Kafka at {where}")
    closed = f"127.0.0.1:{free_port()}"
    message = str(unreachable_error(load_settings(kafka_bootstrap_servers=closed, **sasl), timeout))
    assert message.startswith(f"cannot reach Kafka at {closed}")
    _assert_no_secret(message)


def _store(rds: RedisServer, **kw: object) -> RedisStateStore:
    return RedisStateStore.from_settings(
        load_settings(redis_url=kw.pop("url", rds.url), redis_key_prefix="sec", **kw)
    )


def _refused(rds: RedisServer, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        _store(rds, **kw)
    message = str(info.value)
    _assert_no_secret(message)
    return message


def test_redis_auth_and_acl_users(make_redis: MakeRedis) -> None:
    rds = make_redis(password=REDIS_ADMIN_PASSWORD, acl_users=[SCORER_ACL, READONLY_ACL])
    # The ACL user, the default user's requirepass, and credentials in the URL all work.
    for kw in (
        {"redis_username": REDIS_USER, "redis_password": REDIS_PASSWORD},
        {"redis_password": REDIS_ADMIN_PASSWORD},
        {"url": f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{rds.port}/0"},
    ):
        store = _store(rds, **kw)
        store.save({"u1": b"state"}, {0: {"u1": 5}}, {0: 7})
        assert store.load(["u1", "u2"]) == {"u1": b"state"}
        assert store.watermarks([0]) == {0: 7}
        store.close()

    hint = "check STREAMSCORE_REDIS_USERNAME/STREAMSCORE_REDIS_PASSWORD"
    message = _refused(rds, redis_username=REDIS_USER, redis_password="wrong-" + REDIS_PASSWORD)
    assert f"Redis at {rds.url} refused to connect" in message and hint in message
    message = _refused(rds)  # no credentials at all
    assert f"Redis at {rds.url} refused to connect" in message and hint in message
    message = _refused(
        rds, url=f"redis://{REDIS_USER}:{REDIS_ADMIN_PASSWORD}@127.0.0.1:{rds.port}/0"
    )
    assert f"redis://{REDIS_USER}:***@127.0.0.1:{rds.port}/0" in message
    # A user without the commands the scorer needs (SCRIPT LOAD): named as an ACL problem.
    message = _refused(rds, redis_username="reader", redis_password="reader-pw-0c4e")
    assert "ACL permissions" in message and hint in message


def test_run_with_a_wrong_redis_password_exits_with_a_clear_error(
    make_redis: MakeRedis, tmp_path: Path
) -> None:
    rds = make_redis(password=REDIS_ADMIN_PASSWORD)
    log = tmp_path / "scorer.log"
    proc = start_scorer(
        scorer_env(
            redis_url=rds.url,
            redis_password=WRONG_KAFKA_PASSWORD,
            checkpoint_key="ckpt-key",
            metrics_port=0,
        ),
        log,
    )
    code = proc.wait(timeout=60)
    text = log.read_text()
    assert code == 2, text
    assert f"streamscore: configuration error: Redis at {rds.url} refused to connect" in text
    assert "check STREAMSCORE_REDIS_USERNAME/STREAMSCORE_REDIS_PASSWORD" in text
    _assert_no_secret(text)


@pytest.mark.slow
def test_tls_to_kafka_and_redis_is_verified_end_to_end(
    stack: None,
    make_broker: MakeBroker,
    make_redis: MakeRedis,
    tls_files: TlsFiles,
    tmp_path: Path,
) -> None:
    """Kafka over SSL and Redis over TLS only, mutual: both sides' certificates checked."""
    tls = tls_files
    tag = f"t{os.getpid()}"
    topics = topic_settings(tag)
    events = [
        e
        for e in ShopSimulator(SimulationConfig(users=40, days=20, seed=23)).events()
        if isinstance(e, dict)
    ]
    users = {str(e["user_id"]) for e in events}
    broker = make_broker(tls=tls, client_certs=True)
    rds = make_redis(tls=tls, client_certs=True)
    assert rds.url.startswith("rediss://")
    _assert_plaintext_refused(rds.port)
    admin = broker.client_config()
    assert admin["security_protocol"] == "SSL"
    broker.create_topics(list(topics.values()))
    produce(
        admin,
        topics["input_topic"],
        [(str(e["user_id"]).encode(), encode_event(e)) for e in events],
    )
    settings = {
        **topics,
        "kafka_bootstrap_servers": broker.bootstrap,
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": tls.cert,
        "kafka_ssl_certfile": tls.cert,  # both servers ask for a client certificate
        "kafka_ssl_keyfile": tls.key,
        "redis_url": rds.url,
        "redis_ssl_ca_certs": tls.cert,
        "redis_ssl_certfile": tls.cert,
        "redis_ssl_keyfile": tls.key,
        "checkpoint_key": "ckpt-key",
        "metrics_port": 0,
    }
    log = tmp_path / "scorer.log"
    scorer = start_scorer(scorer_env(**settings), log)
    progress = GroupProgress(admin, "streamscore", topics["input_topic"])
    try:
        wait_for("everything committed", lambda: progress.fraction() >= 1.0, 90,
                 {log: scorer})  # fmt: skip
    finally:
        progress.close()
        scorer.terminate()
        code = scorer.wait(timeout=30)
    assert code == 0, log.read_text()[-4000:]
    scores = consume(admin, topics["scores_topic"])
    assert {s["user_id"] for s in scores} == users
    # The states went to the TLS-only Redis, through the same settings.
    store = RedisStateStore.from_settings(load_settings(**settings))
    try:
        saved = store.load(sorted(users))
    finally:
        store.close()
    assert set(saved) == users

    # No client certificate, where Redis asks for one: refused at start, and said so.
    anonymous = {
        k: v for k, v in settings.items() if k not in {"redis_ssl_certfile", "redis_ssl_keyfile"}
    }
    with pytest.raises(ConfigError, match="STREAMSCORE_REDIS_SSL_CERTFILE"):
        RedisStateStore.from_settings(load_settings(**anonymous))

    # Nothing listening is still "cannot reach", not a TLS problem.
    closed = {**settings, "redis_url": f"rediss://127.0.0.1:{free_port()}/0"}
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        RedisStateStore.from_settings(load_settings(**closed))

    # A CA that did not sign the server's certificate: refused at start, and said so.
    other = make_tls_files(tmp_path / "other-ca")
    with pytest.raises(ConfigError, match="STREAMSCORE_REDIS_SSL_CA_CERTS") as refused:
        RedisStateStore.from_settings(
            load_settings(**{**settings, "redis_ssl_ca_certs": other.cert})
        )
    assert "certificate verify failed" in str(refused.value)


def _assert_plaintext_refused(redis_port: int) -> None:
    """The TLS-only Redis does not answer a plaintext client."""
    plain = redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=3)
    try:
        with pytest.raises(redis.RedisError):
            plain.ping()
    finally:
        plain.close()
