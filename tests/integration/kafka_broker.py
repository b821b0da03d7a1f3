"""Private servers for the reliability and security tests: servers a test may stop, restart
or lock with credentials without disturbing the shared stack (scripts/stack) other tests use.

- ``PrivateBroker``: an extra single-node Kafka (KRaft, broker + controller in one JVM) run from
  the same Maven jars as the stack, in a temporary directory on free ports; optionally with a
  ``SASL_PLAINTEXT`` listener and SCRAM-SHA-256 users created at format time.
- ``PrivateRedis``: an extra ``redis-server`` on a free port, AOF on (so a stop and restart
  keeps the data), optionally with ``requirepass`` and ACL users.

Both are context managers and stop what they started, by pid.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_VERSION = os.environ.get("STREAMSCORE_KAFKA_VERSION", "4.1.1")
STACK_DIR = Path(os.environ.get("STREAMSCORE_STACK_DIR", REPO_ROOT / ".stack"))
JARS_DIR = STACK_DIR / "kafka-dist" / KAFKA_VERSION / "jars"
BROKER_ADMIN = ("admin", "admin-secret-for-tests")  # SCRAM user the broker itself uses

_LOG4J = """\
status = warn
name = streamscore-private-broker
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def require_jars() -> None:
    """Skip (or fail under scripts/test) when the stack's Kafka jars or Java are missing."""
    problem = None
    if not (JARS_DIR / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        problem = f"Kafka jars missing in {JARS_DIR}; run scripts/stack up once"
    elif shutil.which("java") is None:
        problem = "java not found"
    if problem is None:
        return
    if os.environ.get("STREAMSCORE_STACK") == "1":
        pytest.fail(problem)
    pytest.skip(problem)


def topic_names(tag: str) -> dict[str, str]:
    """The five topic settings of one test's scorer, each name prefixed with ``tag``."""
    return {
        "input_topic": f"{tag}-user-events",
        "scores_topic": f"{tag}-user-scores",
        "alerts_topic": f"{tag}-churn-alerts",
        "segments_topic": f"{tag}-segment-changes",
        "dlq_topic": f"{tag}-user-events-dlq",
    }


def _cluster_id() -> str:
    """A random KRaft cluster id that the storage tool's parser accepts.

    Base64 of a UUID starts with '-' one time in 64; the tool's argument parser
    then reads it as an option and formatting fails (CI hit this).  Kafka's own
    Uuid.randomUuid skips such ids for the same reason.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java(*args: str, log: Path | None = None, heap: str = "-Xmx256m") -> list[str]:
    return [
        "java",
        heap,
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log}" if log else "-Dlog4j2.level=WARN",
        "-cp",
        f"{JARS_DIR}/*",
        *args,
    ]


def _terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM a server and wait for it; SIGKILL if it hangs."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost: its own trust anchor."""

    cert: Path  # PEM certificate: what clients trust
    key: Path  # PEM private key (PKCS#8, unencrypted)
    bundle: Path  # key then certificate, as Kafka's PEM keystore wants them


def make_tls_files(root: Path) -> TlsFiles:
    """Generate a throw-away server certificate with openssl (valid two days)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    root.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(root / "cert.pem", root / "key.pem", root / "bundle.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(files.key), "-out", str(files.cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    files.bundle.write_text(files.key.read_text() + files.cert.read_text())
    return files


class PrivateBroker:
    """One Kafka broker of our own; ``sasl_users`` turns on SASL with SCRAM-SHA-256 (and PLAIN
    too with ``plain=True``), the users created at format time; ``tls`` puts the listener on
    TLS (SSL, or SASL_SSL with users)."""

    def __init__(
        self,
        root: Path,
        *,
        sasl_users: dict[str, str] | None = None,
        plain: bool = False,
        tls: TlsFiles | None = None,
        client_certs: bool = False,
    ) -> None:
        self.root = root
        self.sasl_users = sasl_users
        self.plain = plain
        self.tls = tls
        self.client_certs = client_certs  # TLS clients must present a certificate it trusts
        self.port = free_port()
        self.controller_port = free_port()
        self.data = root / "data"
        self.props = root / "server.properties"
        self.log_config = root / "log4j2.properties"
        self.log = root / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- set-up ---------------------------------------------------------------------------

    @property
    def sasl(self) -> bool:
        """True when clients must authenticate."""
        return self.sasl_users is not None

    @property
    def protocol(self) -> str:
        """The client listener's security protocol."""
        if self.sasl:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    @property
    def bootstrap(self) -> str:
        """host:port for clients."""
        return f"127.0.0.1:{self.port}"

    def client_config(self, user: str | None = None, password: str | None = None) -> dict[str, Any]:
        """kafka-python keyword arguments for a client (the broker's admin user by default)."""
        cfg: dict[str, Any] = {"bootstrap_servers": [self.bootstrap]}
        cfg["security_protocol"] = self.protocol
        if self.tls:
            cfg["ssl_cafile"] = str(self.tls.cert)
            if self.client_certs:
                cfg["ssl_certfile"] = str(self.tls.cert)
                cfg["ssl_keyfile"] = str(self.tls.key)
        if self.sasl:
            cfg.update(
                sasl_mechanism="SCRAM-SHA-256",
                sasl_plain_username=user or BROKER_ADMIN[0],
                sasl_plain_password=password or BROKER_ADMIN[1],
            )
        return cfg

    def settings_env(self) -> dict[str, str]:
        """STREAMSCORE_* variables pointing a scorer here (no credentials)."""
        env = {
            "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STREAMSCORE_KAFKA_SECURITY_PROTOCOL": self.protocol,
        }
        if self.tls:
            env["STREAMSCORE_KAFKA_SSL_CAFILE"] = str(self.tls.cert)
            if self.client_certs:
                env["STREAMSCORE_KAFKA_SSL_CERTFILE"] = str(self.tls.cert)
                env["STREAMSCORE_KAFKA_SSL_KEYFILE"] = str(self.tls.key)
        if self.sasl:
            env["STREAMSCORE_KAFKA_SASL_MECHANISM"] = "SCRAM-SHA-256"
        return env

    def _write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        listener = self.protocol
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners={listener}://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={listener}://127.0.0.1:{self.port}",
            f"listener.security.protocol.map={listener}:{listener},CONTROLLER:PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={listener}",
            f"log.dirs={self.data}",
            "num.partitions=4",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=2",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=2",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "num.network.threads=2",
            "num.io.threads=2",
            "background.threads=2",
            "num.recovery.threads.per.data.dir=1",
        ]
        if self.tls:
            # The broker also connects to itself over this listener, so it trusts its own cert.
            lines += [
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={self.tls.bundle}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.tls.cert}",
                f"ssl.client.auth={'required' if self.client_certs else 'none'}",
            ]
        if self.sasl:
            user, password = BROKER_ADMIN
            jaas = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{user}" password="{password}";'
            )
            lines += [
                "sasl.enabled.mechanisms=SCRAM-SHA-256" + (",PLAIN" if self.plain else ""),
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256",
                f"listener.name.{listener.lower()}.scram-sha-256.sasl.jaas.config={jaas}",
            ]
            if self.plain:
                users = {**(self.sasl_users or {}), user: password}
                plain_jaas = (
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    + " ".join(f'user_{u}="{p}"' for u, p in users.items())
                    + ";"
                )
                lines.append(
                    f"listener.name.{listener.lower()}.plain.sasl.jaas.config={plain_jaas}"
                )
        self.props.write_text("\n".join(lines) + "\n")
        self.log_config.write_text(_LOG4J)

    def _format(self) -> None:
        cmd = _java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={_cluster_id()}",
            "-c",
            str(self.props),
            log=self.log_config,
        )
        users = dict(self.sasl_users or {})
        if self.sasl:
            users[BROKER_ADMIN[0]] = BROKER_ADMIN[1]
        for name, password in users.items():
            cmd += ["--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise RuntimeError(
                f"formatting the private KRaft dir failed:\n{out.stdout}{out.stderr}"
            )

    # -- life cycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the JVM (formatting the data dir the first time) and wait until it serves."""
        if self.starts == 0:
            self._write_config()
            self._format()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                _java(
                    "kafka.Kafka",
                    str(self.props),
                    log=self.log_config,
                    heap="-Xmx384m",
                ),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until an admin client sees a registered broker."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"private broker exited:\n{self.tail()}")
            if _port_open(self.port):
                try:
                    admin = KafkaAdminClient(
                        request_timeout_ms=3000, bootstrap_timeout_ms=3000, **self.client_config()
                    )
                    try:
                        if admin.describe_cluster().get("brokers"):
                            return
                    finally:
                        admin.close()
                except KafkaError as exc:
                    last = exc
            time.sleep(0.3)
        raise RuntimeError(f"private broker not ready in {timeout_s}s ({last!r}):\n{self.tail()}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (a clean broker shutdown) and wait; SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        _terminate(proc, timeout_s)

    def tail(self, lines: int = 40) -> str:
        """The end of the broker's log, for failure messages."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def create_topics(self, names: Iterable[str], partitions: int = 4) -> None:
        """Create topics and wait until they have leaders."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(**self.client_config())
        try:
            wanted = list(names)
            admin.create_topics([NewTopic(t, partitions, 1) for t in wanted])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                topics = {t["name"]: t for t in admin.describe_topics(wanted)}
                if all(
                    t in topics
                    and topics[t]["partitions"]
                    and all(p["leader_id"] >= 0 for p in topics[t]["partitions"])
                    for t in wanted
                ):
                    return
                time.sleep(0.2)
            raise RuntimeError(f"topics {wanted} have no leaders after 30s")
        finally:
            admin.close()

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PrivateRedis:
    """One redis-server of our own, AOF on, so that stopping and restarting keeps the data."""

    def __init__(
        self,
        root: Path,
        *,
        password: str | None = None,
        acl_users: Iterable[str] = (),
        tls: TlsFiles | None = None,
        client_certs: bool = False,
    ) -> None:
        self.root = root
        self.password = password
        self.tls = tls  # TLS only: the plain port is closed
        self.client_certs = client_certs  # TLS clients must present a certificate it trusts
        self.acl_users = list(acl_users)  # full ACL SETUSER rules, e.g. "bob on >pw ~* &* +@all"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "redis.log"

    @property
    def url(self) -> str:
        """redis:// (or, with TLS, rediss://) URL without credentials."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """An admin client (the default user)."""
        if self.tls:
            client_cert = (
                {"ssl_certfile": str(self.tls.cert), "ssl_keyfile": str(self.tls.key)}
                if self.client_certs
                else {}
            )
            return redis.Redis(
                host="127.0.0.1",
                port=self.port,
                password=self.password,
                ssl=True,
                ssl_ca_certs=str(self.tls.cert),
                **client_cert,
            )
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self, timeout_s: float = 20.0) -> None:
        """Start (or restart with the same dir and port) and wait for PING."""
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port)]
            ports += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            ports += ["--tls-ca-cert-file", str(self.tls.cert)]
            ports += ["--tls-auth-clients", "yes" if self.client_certs else "no"]
        cmd = [
            "redis-server",
            *ports,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.root),
            "--logfile",
            str(self.log),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        for rule in self.acl_users:
            cmd += ["--user", *rule.split()]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log.read_text(errors='replace')}")
            try:
                c = self.client()
                try:
                    if c.ping():
                        return
                finally:
                    c.close()
            except redis.BusyLoadingError:
                pass
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on {self.port} did not answer in {timeout_s}s")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM: Redis fsyncs its AOF and exits (data kept for the next start)."""
        proc, self.proc = self.proc, None
        _terminate(proc, timeout_s)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- clients for any broker (shared or private), given kafka-python keyword arguments -------


def produce_to(
    client: dict[str, Any], topic: str, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    """Produce (key, value) records with acks=all and wait for all of them."""
    from kafka import KafkaProducer

    producer = KafkaProducer(acks="all", linger_ms=5, **client)
    n = 0
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
            n += 1
        producer.flush(timeout=60)
    finally:
        producer.close()
    return n


def consume_from(client: dict[str, Any], topic: str, idle_s: float = 3.0) -> list[dict[str, Any]]:
    """Every JSON record of a topic, read from the beginning until it goes quiet."""
    import orjson
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(idle_s * 1000),
        **client,
    )
    try:
        return [orjson.loads(m.value) for m in consumer]
    finally:
        consumer.close()


class GroupProgress:
    """A consumer group's committed offsets against a topic's end offsets.

    Keeps its clients open, so polling it every few tens of milliseconds is cheap.
    """

    def __init__(self, client: dict[str, Any], group: str, topic: str) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

        self.group = group
        self.topic = topic
        self.admin = KafkaAdminClient(**client)
        self.consumer = KafkaConsumer(**client)
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.parts = [TopicPartition(topic, p) for p in sorted(parts)]

    def ends(self) -> dict[int, int]:
        """End offset of every partition."""
        return {tp.partition: o for tp, o in self.consumer.end_offsets(self.parts).items()}

    def committed(self) -> dict[int, int]:
        """The group's committed offset per partition (absent: nothing committed yet)."""
        from kafka.errors import KafkaError

        try:
            offsets = self.admin.list_group_offsets(self.group).get(self.group, {})
        except KafkaError:
            return {}
        return {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == self.topic}

    def fraction(self) -> float:
        """Share of the topic's records the group has committed."""
        ends = self.ends()
        total = sum(ends.values())
        if not total:
            return 1.0
        done = self.committed()
        return sum(min(done.get(p, 0), e) for p, e in ends.items()) / total

    def close(self) -> None:
        """Release the clients."""
        self.consumer.close()
        self.admin.close()


def scrape(port: int, metric: str) -> dict[str, float]:
    """Samples of one metric from a Prometheus endpoint on 127.0.0.1: {label text: value}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{") or line.startswith(metric + " "):
            name, _, value = line.rpartition(" ")
            out[name[len(metric) :]] = float(value)
    return out
