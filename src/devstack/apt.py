"""Debian packages the stack runs (redis-server, prometheus), installed with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from devstack.procs import DevstackError

Say = Callable[[str], None]


def apt_install(packages: list[str], log: Path, say: Say) -> None:
    """``apt-get update`` and install ``packages`` (needs root)."""
    names = " ".join(packages)
    if shutil.which("apt-get") is None:
        raise DevstackError(f"apt-get not found; install {names} yourself")
    if os.geteuid() != 0:
        raise DevstackError(f"installing {names} needs root: sudo apt-get install -y {names}")
    say(f"installing {names} with apt-get…")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        ):
            done = subprocess.run(argv, stdout=out, stderr=out, env=env, check=False)
            if done.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise DevstackError(f"{tail}\napt-get install {names} failed (log: {log})")


def _running(name: str, user: str | None = None) -> bool:
    argv = ["pgrep", "-x", name] if user is None else ["pgrep", "-u", user, "-x", name]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def stop_debian_service(service: str, process: str, say: Say, user: str | None = None) -> None:
    """Stop a service a package's postinst may have started: the stack runs its own."""
    if not _running(process, user):
        return
    say(f"stopping the Debian {service} service (we run our own instance)")
    subprocess.run(["service", service, "stop"], capture_output=True, check=False)
    if shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "disable", "--now", service], capture_output=True, check=False)


def ensure_redis(log: Path, say: Say) -> None:
    """Install Debian's redis-server and redis-tools unless both commands are there."""
    if shutil.which("redis-server") and shutil.which("redis-cli"):
        return
    apt_install(["redis-server", "redis-tools"], log, say)
    stop_debian_service("redis-server", "redis-server", say)


def ensure_prometheus(log: Path, say: Say, warn: Say) -> None:
    """Install Debian's prometheus (not started: the Prometheus test starts its own)."""
    if shutil.which("prometheus") is None:
        apt_install(["prometheus"], log, say)
    # The Debian service must not hold 9090.
    stop_debian_service("prometheus", "prometheus", say, user="prometheus")
    if _running("prometheus", "prometheus"):
        warn("Debian's prometheus service is still running; stop it: service prometheus stop")
    version = subprocess.run(
        ["prometheus", "--version"], capture_output=True, text=True, check=False
    )
    first = (version.stdout + version.stderr).strip().splitlines()
    say(f"prometheus installed ({first[0].split(' (')[0] if first else '?'}) - not started")
