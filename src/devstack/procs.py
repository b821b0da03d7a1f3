"""Processes and ports on loopback: what every server of the dev stack needs.

A server is known by its pid file and by its command line, so a stack started by one
``scripts/stack`` run can be found and stopped by the next. A server started from this
Python process is also kept as a ``Popen``, so that stopping it reaps it: a zombie still
answers ``kill(pid, 0)``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class DevstackError(RuntimeError):
    """Something the person running the stack can act on; the message says what to do."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def listener(port: int) -> str:
    """Who listens on ``port`` (from ``ss``), for error messages; empty when unknown."""
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    line = out.strip().splitlines()[0] if out.strip() else ""
    return line[line.find("users:") :] if "users:" in line else line


def wait_until(
    what: str,
    condition: Callable[[], bool],
    timeout_s: float,
    *,
    interval_s: float = 0.1,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``condition`` until it holds; raise ``DevstackError`` after ``timeout_s``, or at
    once when ``alive`` says the process it waits for has died."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise DevstackError(f"the process exited while waiting for {what}")
        if condition():
            return
        if time.monotonic() > deadline:
            raise DevstackError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def has_marker(pid: int, marker: str) -> bool:
    """True when ``marker`` stands in the process's command line as whole words."""
    return f" {marker} " in f" {' '.join(cmdline(pid).split())} "


def find_pid(marker: str) -> int | None:
    """The first live process whose command line holds ``marker`` (pid file lost)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and has_marker(int(entry.name), marker):
            pid = int(entry.name)
            if not _zombie(pid):
                return pid
    return None


class Process:
    """One server process: started here (``Popen``) or found again by its pid file."""

    def __init__(self, pidfile: Path, marker: str) -> None:
        self.pidfile = pidfile
        self.marker = marker  # a part of the command line that only this server has
        self._popen: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: Sequence[str], log: Path, *, write_pidfile: bool = True) -> int:
        """Start ``argv`` in its own session (it outlives this process), output to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
        if write_pidfile:
            self.pidfile.write_text(f"{self._popen.pid}\n")
        return self._popen.pid

    def pid(self) -> int | None:
        """The live server's pid, or None. A pid file is trusted only for our command line."""
        if self._popen is not None:
            return self._popen.pid if self._popen.poll() is None else None
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and has_marker(pid, self.marker) and not _zombie(pid):
            return pid
        return find_pid(self.marker)

    def alive(self) -> bool:
        """True while the server runs."""
        return self.pid() is not None

    def signal(self, signum: int) -> bool:
        """Send a signal; False when there was no process."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout_s: float, *, on_kill: Callable[[], None] | None = None) -> bool:
        """SIGTERM and wait; SIGKILL after ``timeout_s``. False when it was not running."""
        pid = self.pid()
        if pid is None:
            self._forget()
            return False
        try:
            os.kill(pid, signal.SIGCONT)  # a paused server cannot shut down
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it just exited
        if not self._wait_gone(pid, timeout_s):
            if on_kill is not None:
                on_kill()
            self.kill()
        self._forget()
        return True

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone (no clean shutdown)."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 30)
        self._forget()

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        if self._popen is not None and self._popen.pid == pid:
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _zombie(pid):
                return True
            time.sleep(0.05)
        return False

    def _forget(self) -> None:
        self._popen = None
        self.pidfile.unlink(missing_ok=True)


class Server:
    """A server that is a context manager: started on entry, stopped on exit."""

    def start(self, timeout_s: float = 60.0) -> Any:
        """Start and wait until it serves."""
        raise NotImplementedError

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop; False when it was not running."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
