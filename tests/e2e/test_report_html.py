"""report.html in a real browser: Debian's Chromium, headless, loads the page from a file and
runs its script; the dumped DOM must hold every plot drawn from the report's own data.

Chromium is installed by scripts/test; without it this fails under ``STREAMSCORE_STACK=1``
and skips otherwise. A screenshot is written into the test's temporary directory (set
``STREAMSCORE_TEST_SCREENSHOT=path`` to keep a copy) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streamscore.config import load_settings
from streamscore.embedded import demo, replay, write_events
from streamscore.simulator import ShopSimulator, SimulationConfig

SIM = SimulationConfig(users=300, days=75.0, seed=5)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1500,2000",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "chromium not installed (scripts/test installs Debian's chromium)"
    if os.environ.get("STREAMSCORE_STACK") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("STREAMSCORE_")}
    try:
        settings = load_settings()
        out = tmp_path_factory.mktemp("report")
        demo(settings, SIM, out / "demo", show_progress=False)
        events = out / "events.jsonl"
        write_events(ShopSimulator(SIM).events(), events)
        (out / "replay").mkdir()
        replay(settings, events, out / "replay", show_progress=False)
    finally:
        os.environ.update(saved)
    return {"demo": out / "demo", "replay": out / "replay"}


def browse(chromium: str, page: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = page.parent / f"chromium-profile-{len(extra)}"
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=page.parent,
    )


def drawn(dom: str) -> dict[str, int]:
    """data-series name → data-points of every drawn series in the DOM."""
    out: dict[str, int] = {}
    for tag in re.findall(r"<[^>]*\bdata-series=\"[^\"]+\"[^>]*>", dom):
        name = re.search(r'data-series="([^"]+)"', tag)
        points = re.search(r'data-points="(\d+)"', tag)
        assert name and points, tag
        out[name.group(1)] = int(points.group(1))
    return out


@pytest.mark.parametrize("run", ["demo", "replay"])
def test_every_plot_is_drawn_from_the_report(
    chromium: str, runs: dict[str, Path], run: str
) -> None:
    out = runs[run]
    page = out / "report.html"
    rep: dict[str, Any] = json.loads((out / "report.json").read_text())
    html = page.read_text()
    # Self-contained: nothing to fetch (the SVG namespace is a name, not a request).
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "@import" not in html and "fetch(" not in html
    dom = browse(chromium, page, "--dump-dom").stdout
    assert 'data-drawn="yes"' in dom, dom[-2000:]
    assert re.search(r'<div id="errors"></div>', dom), "the page's script reported errors"
    assert 'data-empty="true"' not in dom
    series = drawn(dom)
    churn, value = rep["churn"], rep["value"]
    assert series["roc"] == len(churn["roc_curve"]) > 20
    assert series["calibration"] == len(churn["calibration"]) >= 5
    assert series["auc-over-time"] >= 5
    assert series["gain"] == series["gain-perfect"] == len(value["gain_curve"]["share"]) == 51
    assert series["lift"] == 10
    assert series["segments"] == len(rep["segments"]) >= 3
    assert series["lifecycles"] == len(rep["lifecycles"]) >= 3
    # The ROC path really goes through the data: as many path commands as points.
    roc = re.search(r'<path d="([^"]+)"[^>]*data-series="roc"', dom)
    assert roc and roc.group(1).count("L") == len(churn["roc_curve"]) - 1


def test_screenshot_of_the_demo_report(chromium: str, runs: dict[str, Path]) -> None:
    shot = runs["demo"] / "report.png"
    browse(chromium, runs["demo"] / "report.html", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page is ~10 kB
    keep = os.environ.get("STREAMSCORE_TEST_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
