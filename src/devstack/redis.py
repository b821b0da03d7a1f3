"""Redis servers of our own: the stack's, the tests' private ones, and a 3-master cluster.

Every server runs in the foreground of its own session (``--daemonize no``) with a pid file
and its data in its own directory; AOF persistence is on and RDB snapshots are off, so a
stop and start on the same directory keeps the data. Variants: ``requirepass``, ACL users,
TLS only (the plain port closed, optionally mutual), and cluster mode. A cluster has three
masters and optionally a replica each (so a master can fail over), can move slots between
masters while clients work (``reshard``), and takes the same credentials and TLS.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.procs import (
    DevstackError,
    Process,
    Server,
    free_port,
    listener,
    port_open,
    wait_until,
)
from devstack.tls import TlsFiles

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster as ClusterClient

CLUSTER_SLOTS = 16384
CLUSTER_MASTERS = 3
CLUSTER_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000


def require_redis_server() -> None:
    """Raise unless Debian's redis-server and redis-cli are on the PATH."""
    missing = [c for c in ("redis-server", "redis-cli") if shutil.which(c) is None]
    if missing:
        raise DevstackError(
            f"{' and '.join(missing)} not installed; scripts/stack up installs them "
            "(apt-get install -y redis-server redis-tools)"
        )


class RedisServer(Server):
    """One ``redis-server`` on 127.0.0.1:``port``, its files under ``root``."""

    def __init__(
        self,
        root: Path,
        port: int,
        *,
        password: str | None = None,
        acl_users: Iterable[str] = (),
        tls: TlsFiles | None = None,
        client_certs: bool = False,
        appendfsync: str = "always",
        cluster: bool = False,
        node_timeout_ms: int = 5000,
    ) -> None:
        self.root = root
        self.port = port
        self.password = password
        self.acl_users = list(acl_users)  # full ACL SETUSER rules, e.g. "bob on >pw ~* &* +@all"
        self.tls = tls  # TLS only: the plain port is closed
        self.client_certs = client_certs  # TLS clients must present a certificate it trusts
        self.appendfsync = appendfsync
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms  # a cluster node unreachable this long fails
        self.log = root / "redis.log"
        self.process = Process(root / "redis.pid", f"redis-server 127.0.0.1:{port}")

    @property
    def address(self) -> tuple[str, int]:
        """(host, port)."""
        return ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        """redis:// (or, with TLS, rediss://) URL without credentials."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client_options(self) -> dict[str, Any]:
        """redis-py keyword arguments of an admin client (the default user)."""
        options: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        options["password"] = self.password
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.cert))
            if self.client_certs:
                options.update(ssl_certfile=str(self.tls.cert), ssl_keyfile=str(self.tls.key))
        return options

    def client(self, **overrides: Any) -> redis.Redis:
        """An admin client (the default user)."""
        import redis

        return redis.Redis(**{**self.client_options(), **overrides})

    def argv(self) -> list[str]:
        """The server's command line."""
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port)]
            ports += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            ports += ["--tls-ca-cert-file", str(self.tls.cert)]
            ports += ["--tls-auth-clients", "yes" if self.client_certs else "no"]
        else:
            ports = ["--port", str(self.port)]
        argv = ["redis-server", *ports, "--bind", "127.0.0.1", "--protected-mode", "yes"]
        argv += ["--dir", str(self.root), "--logfile", str(self.log), "--daemonize", "no"]
        # The scorer's state store: AOF, no RDB; losing the last second of writes on a crash
        # (everysec) is replayed from Kafka. Never evict: a dropped state is a wrong state.
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync]
        argv += ["--maxmemory-policy", "noeviction"]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", str(self.node_timeout_ms)]
            if self.tls:  # the cluster bus and replication over TLS too
                argv += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
            if self.cluster:  # a replica authenticates to its master as the default user
                argv += ["--masterauth", self.password]
        for rule in self.acl_users:
            argv += ["--user", *rule.split()]
        return argv

    def pid(self) -> int | None:
        """The running server's pid, or None."""
        return self.process.pid()

    def start(self, timeout_s: float = 20.0) -> int:
        """Start (or restart on the same directory and port) and wait for PING; its pid."""
        require_redis_server()
        if port_open(self.port):
            raise DevstackError(
                f"port {self.port} is in use by another process ({listener(self.port)}) - e.g. "
                "Debian's redis service: 'service redis-server stop', or set "
                "STREAMSCORE_REDIS_PORT"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        pid = self.process.spawn(self.argv(), self.root / "redis.out")
        try:
            self.wait_ready(timeout_s)
        except DevstackError as exc:
            self.process.kill()
            raise DevstackError(f"{exc}; see {self.log}:\n{self.tail()}") from None
        return pid

    def healthy(self) -> bool:
        """One PING (a server still loading its AOF is not healthy yet)."""
        import redis

        try:
            client = self.client(socket_timeout=3, socket_connect_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        """Block until PING answers; fail at once if the process died."""
        wait_until(
            f"redis on 127.0.0.1:{self.port}", self.healthy, timeout_s, alive=self.process.alive
        )

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM: Redis fsyncs its AOF and exits. SIGKILL if it hangs. False if not running."""
        return self.process.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL: a crash (what the AOF has not synced is lost)."""
        self.process.kill()

    def pause(self) -> None:
        """SIGSTOP: the server hangs, connections stay open (a stalled Redis, not a dead one)."""
        self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        self.process.signal(signal.SIGCONT)

    def restart(self, timeout_s: float = 20.0) -> int:
        """Stop, then start on the same directory and port (the data is kept)."""
        self.stop()
        return self.start(timeout_s)

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log, for failure messages."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def info(self, section: str = "server") -> dict[str, Any]:
        """``INFO section`` as a dict."""
        client = self.client(socket_timeout=3)
        try:
            return dict(client.info(section))
        finally:
            client.close()


def free_cluster_ports(count: int = CLUSTER_MASTERS) -> list[int]:
    """Free loopback ports whose cluster bus ports (+10000) are free too, both below the
    kernel's ephemeral range.

    A port the kernel hands out (``bind(0)``) is ephemeral, and so is its bus port 10,000
    higher: any client's outgoing connection (Kafka's, Redis's) may hold that bus port by the
    time the node binds it, and the node then exits with "Address already in use". Below the
    ephemeral range only listeners take ports, and those can be checked.
    """
    low = _ephemeral_low() - CLUSTER_BUS_OFFSET
    rng = random.Random()
    ports: list[int] = []
    for _ in range(10_000):
        if len(ports) == count:
            return ports
        port = rng.randrange(1024, low) if low > 1024 else free_port()
        if port not in ports and _can_bind(port) and _can_bind(port + CLUSTER_BUS_OFFSET):
            ports.append(port)
    raise DevstackError(f"found no {count} free ports for a Redis Cluster on 127.0.0.1")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _can_bind(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_cluster_ports(ports: Sequence[int], replicas: int = 0) -> None:
    """Distinct ports, three masters and their replicas, whose bus ports (+10000) exist too."""
    want = CLUSTER_MASTERS * (1 + replicas)
    if len(set(ports)) != want or len(ports) != want:
        raise DevstackError(
            f"a Redis Cluster here has {CLUSTER_MASTERS} masters with {replicas} replica(s) "
            f"each on {want} ports, got {list(ports)}"
        )
    for port in ports:
        if not 0 < port <= 65535 - CLUSTER_BUS_OFFSET:
            raise DevstackError(
                f"Redis Cluster port {port}: its bus port {port + CLUSTER_BUS_OFFSET} does not "
                "exist; set STREAMSCORE_REDIS_CLUSTER_PORT below 55534"
            )


class RedisCluster(Server):
    """A real Redis Cluster on loopback: three masters, ``replicas`` replicas of each (0 or
    more), one directory per node. ``password``, ``acl_users`` and ``tls`` apply to every
    node, as on ``RedisServer``; ``node_timeout_ms`` is how soon a dead master fails over."""

    def __init__(
        self,
        root: Path,
        ports: Sequence[int],
        *,
        appendfsync: str = "everysec",
        replicas: int = 0,
        node_timeout_ms: int = 5000,
        password: str | None = None,
        acl_users: Iterable[str] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        check_cluster_ports(ports, replicas)
        self.root = root
        self.replicas = replicas
        self.password = password
        self.tls = tls
        rules = list(acl_users)
        self.nodes = [
            RedisServer(
                root / f"node-{p}",
                p,
                appendfsync=appendfsync,
                cluster=True,
                node_timeout_ms=node_timeout_ms,
                password=password,
                acl_users=rules,
                tls=tls,
            )
            for p in ports
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every node, the startup nodes of a cluster client."""
        return [n.address for n in self.nodes]

    @property
    def seeds(self) -> str:
        """Every node as ``host:port,host:port``."""
        return ",".join(f"{h}:{p}" for h, p in self.addresses)

    @property
    def url(self) -> str:
        """The URL streamscore takes for this cluster (``redis+cluster://``, ``rediss+`` with
        TLS), every node a seed, without credentials."""
        return f"{'rediss' if self.tls else 'redis'}+cluster://{self.seeds}"

    def client(self, **options: Any) -> ClusterClient:
        """A redis-py cluster client (the default user; ``options`` override)."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as Client

        defaults = {
            k: v for k, v in self.nodes[0].client_options().items() if k not in ("host", "port")
        }
        startup = [ClusterNode(host, port) for host, port in self.addresses]  # type: ignore[no-untyped-call]
        return Client(startup_nodes=startup, **{**defaults, **options})

    def running(self) -> list[int | None]:
        """Each node's pid (None where it is not running)."""
        return [n.pid() for n in self.nodes]

    def delete_keys(self, prefix: str) -> int:
        """Delete every key under ``prefix:`` on every master; how many there were."""
        client = self.client()
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            return sum(int(client.delete(key)) for key in keys)
        finally:
            client.close()

    def node(self, port: int) -> RedisServer:
        """The node on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the nodes; the first time, create the cluster; wait for ``cluster_state:ok``."""
        require_redis_server()
        for node in self.nodes:
            for port in (node.port, node.port + CLUSTER_BUS_OFFSET):
                if port_open(port):
                    raise DevstackError(
                        f"port {port} is in use by another process ({listener(port)}); "
                        "set STREAMSCORE_REDIS_CLUSTER_PORT"
                    )
        for node in self.nodes:
            node.start()
        if self._assigned_slots() < CLUSTER_SLOTS:
            self._create()
        wait_until("cluster_state:ok on every node", self.ok, timeout_s, interval_s=0.2)
        wait_until("every replica in sync", self.replicas_in_sync, timeout_s, interval_s=0.2)

    def _cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """``redis-cli`` with this cluster's TLS and password options."""
        argv = ["redis-cli"]
        if self.tls:
            argv += ["--tls", "--cacert", str(self.tls.cert)]
        if self.password is not None:
            argv += ["-a", self.password, "--no-auth-warning"]
        return subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def _create(self) -> None:
        hosts = [f"{h}:{p}" for h, p in self.addresses]
        replicas = str(self.replicas)
        done = self._cli("--cluster", "create", *hosts, "--cluster-replicas", replicas,
                         "--cluster-yes")  # fmt: skip
        if done.returncode != 0:
            raise DevstackError(
                f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}\n"
                f"(node logs under {self.root}; 'scripts/stack down --wipe' starts over)"
            )

    def _query(self, node: RedisServer, *command: str) -> Any:
        """One command on one node, or None when it does not answer."""
        import redis

        try:
            client = node.client(socket_timeout=3, socket_connect_timeout=1)
            try:
                return client.execute_command(*command)  # type: ignore[no-untyped-call]
            finally:
                client.close()
        except redis.RedisError:
            return None

    def _cluster_info(self, node: RedisServer) -> dict[str, str]:
        text = self._query(node, "CLUSTER INFO")
        if text is None:
            return {}
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)

    def _assigned_slots(self) -> int:
        return max(int(self._cluster_info(n).get("cluster_slots_assigned", 0)) for n in self.nodes)

    def ok(self, *, running_only: bool = False) -> bool:
        """True when every node (every running one, with ``running_only``) says
        ``cluster_state:ok`` with all slots assigned and knows every node of the cluster."""
        nodes = [n for n in self.nodes if not running_only or n.pid() is not None]
        for node in nodes:
            info = self._cluster_info(node)
            if (
                info.get("cluster_state") != "ok"
                or int(info.get("cluster_slots_assigned", 0)) != CLUSTER_SLOTS
                or int(info.get("cluster_known_nodes", 0)) != len(self.nodes)
            ):
                return False
        return bool(nodes)

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now (replicas take over after a failover)."""
        out = []
        for node in self.nodes:
            role = self._query(node, "ROLE")
            if role and (role[0] == b"master" or role[0] == "master"):
                out.append(node)
        return out

    def replicas_in_sync(self) -> bool:
        """True when every running replica's link to its master is up (synced) and every
        master has ``replicas`` of them."""
        masters = 0
        for node in self.nodes:
            if node.pid() is None:
                continue
            role = self._query(node, "ROLE")
            if not role:
                return False
            if role[0] in (b"master", "master"):
                masters += 1
                if len(role[2]) < self.replicas:
                    return False
            elif role[3] not in (b"connected", "connected"):
                return False
        return masters == CLUSTER_MASTERS

    def node_id(self, node: RedisServer) -> str:
        """The cluster's id of a running node."""
        answer = self._query(node, "CLUSTER MYID")
        if answer is None:
            raise DevstackError(f"node 127.0.0.1:{node.port} does not answer CLUSTER MYID")
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    def slot_count(self, node: RedisServer) -> int:
        """How many slots a master serves, as it says itself."""
        shards = self._query(node, "CLUSTER SLOTS") or []
        port = node.port
        return sum(int(s[1]) - int(s[0]) + 1 for s in shards if int(s[2][1]) == port)

    def reshard(self, slots: int, source: RedisServer, target: RedisServer) -> str:
        """Move ``slots`` slots and their keys from one master to another, as an operator
        would (``redis-cli --cluster reshard``), while clients keep working; its output."""
        done = self._cli(
            "--cluster", "reshard", f"127.0.0.1:{source.port}",
            "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
            "--cluster-slots", str(slots), "--cluster-yes", timeout_s=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise DevstackError(f"redis-cli --cluster reshard failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop every node; False when none was running."""
        stopped = [n.stop(timeout_s) for n in self.nodes]  # every node, not just the first
        return any(stopped)
