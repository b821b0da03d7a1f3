"""Every command-line input is checked: a one-line error and exit code 2, never a traceback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from streamscore.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["replay", "{events}", "--out", "{out}", "--as-of", "20260101"], "neither RFC 3339"),
        (["replay", "{events}", "--out", "{out}", "--as-of", "1767225600"], "epoch milliseconds"),
        (["replay", "{events}", "--out", "{out}", "--as-of", "2026-01-01"], "RFC 3339"),
        (["replay", "{events}", "--out", "{out}", "--as-of", "2026-01-01T00:00:00"], "offset"),
        (["replay", "{dir}", "--out", "{out}"], "is a directory"),
        (["replay", "{missing}", "--out", "{out}"], "does not exist"),
        (["replay", "{events}", "--out", "{events}"], "is not a directory"),
        (["replay", "{events}", "--out", "{out}", "--churn-horizon-days", "0"], "above 0"),
        (["replay", "{events}", "--out", "{out}", "--value-horizon-days", "x"], "not a number"),
        (["simulate", "--rate", "-1"], "above 0"),
        (["simulate", "--rate", "0"], "above 0"),
        (["simulate", "--rate", "nan"], "above 0"),
        (["simulate", "--limit", "-5"], "at least 1"),
        (["simulate", "--limit", "0"], "at least 1"),
        (["simulate", "--limit", "2.5"], "not a whole number"),
        (["simulate", "--users", "0"], "at least 1"),
        (["simulate", "--days", "-3"], "above 0"),
        (["simulate", "--bad-fraction", "1.5"], "between 0 and 1"),
        (["simulate", "--drift-day", "-1"], "at least 0"),
        (["simulate", "--out", "{dir}"], "is a directory"),
        (["simulate", "--out", "{missing}/x/events.jsonl"], "does not exist"),
        (["demo", "--users", "-2"], "at least 1"),
        (["demo", "--days", "0"], "above 0"),
        (["demo", "--out", "{events}"], "is not a directory"),
        (["schemas", "--out", "{events}"], "is not a directory"),
        (["tail", "user-scores", "--limit", "-5"], "at least 1"),
        (["--config", "{missing}", "run"], "does not exist"),
        (["run", "--config", "{dir}"], "is a directory"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    places = {
        "events": str(events),
        "out": str(tmp_path / "out"),
        "dir": str(tmp_path),
        "missing": str(tmp_path / "missing"),
    }
    line = refused(capsys, *(a.format(**places) for a in argv))
    assert says in line, line


def test_a_metrics_port_in_use_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("STREAMSCORE_METRICS_PORT", str(port))
        assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"127.0.0.1:{port}: the port is already in use" in err
    assert "STREAMSCORE_METRICS_PORT" in err


def test_as_of_accepts_both_formats(tmp_path: Path) -> None:
    from streamscore.cli_checks import when

    assert when("2026-01-01T00:00:00Z") == when("1767225600000") == 1_767_225_600_000
