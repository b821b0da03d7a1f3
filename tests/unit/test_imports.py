"""Imports go one way, and the layers below the scorer do not pull the models in.

Each check runs in a fresh interpreter, so modules other tests imported do not hide a leak.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BELOW_THE_SCORER = (
    "streamscore.ports",
    "streamscore.config",
    "streamscore.core.values",
    "streamscore.core.inputs",
    "streamscore.core.state",
    "streamscore.adapters.memory",
    "streamscore.adapters.files",
    "streamscore.adapters.kafka",
    "streamscore.adapters.redis_store",
)


def _modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(out.split())


@pytest.mark.parametrize("module", BELOW_THE_SCORER)
def test_importing_does_not_import_river_or_the_scorer(module: str) -> None:
    loaded = _modules_after_import(module)
    assert "river" not in loaded
    assert "streamscore.core.scorer" not in loaded
    assert "streamscore.core.models" not in loaded


def test_the_core_imports_no_io_library() -> None:
    loaded = _modules_after_import("streamscore.core.scorer, streamscore.core.trainer")
    for io_module in ("redis", "kafka", "prometheus_client"):
        assert io_module not in loaded
