"""The promises of docker-compose.yml, the Dockerfile and the Grafana dashboard, checked by
reading them (Docker is not needed): health checks everywhere, start order on health, the
checkpoint key from .env, a dependency layer apart from the code, a dashboard that imports
into any Grafana. The container probe itself is run against a real HTTP server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamscore.config import Settings
from streamscore.config_check import env_name
from streamscore.health import LoopStatus
from streamscore.httpd import HttpServer

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {env_name(f) for f in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        if svc.get("restart") == "no":  # one-shot (kafka-init)
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_start_order_waits_for_health(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must name conditions"
        for dep, cond in deps.items():
            want = (
                "service_completed_successfully"
                if svcs[dep].get("restart") == "no"
                else "service_healthy"
            )
            assert cond == {"condition": want}, (name, dep, cond)
    assert "scorer" in svcs["prometheus"]["depends_on"]
    assert "prometheus" in svcs["grafana"]["depends_on"]
    assert {"kafka-init", "redis"} <= set(svcs["scorer"]["depends_on"])


def test_scorer_probes_its_health_endpoint(compose: dict[str, Any]) -> None:
    scorer = services(compose)["scorer"]
    assert scorer["healthcheck"]["test"] == ["CMD", "python", "-m", "streamscore.probe", "healthz"]
    env = scorer["environment"]
    assert str(env["STREAMSCORE_METRICS_PORT"]) == "9108"
    assert "127.0.0.1:9108:9108" in scorer["ports"]


def test_checkpoint_key_comes_from_the_env_file(compose: dict[str, Any]) -> None:
    scorer = services(compose)["scorer"]
    key = scorer["environment"]["STREAMSCORE_CHECKPOINT_KEY"]
    assert key.startswith("${STREAMSCORE_CHECKPOINT_KEY:?"), key  # required, with a message
    assert {"path": ".env", "required": False} in scorer["env_file"]
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^STREAMSCORE_CHECKPOINT_KEY=", example, re.MULTILINE)
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and ".env.example" not in ignored


def test_compose_and_env_example_use_real_settings(compose: dict[str, Any]) -> None:
    names = set(services(compose)["scorer"]["environment"])
    names |= set(re.findall(r"^#?\s*(STREAMSCORE_\w+)=", (ROOT / ".env.example").read_text(), re.M))
    assert names and names <= SETTINGS, names - SETTINGS


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_installs_dependencies_before_copying_the_code() -> None:
    steps = dockerfile()
    order = [f"{op} {arg}" for op, arg in steps]
    copy_project = next(i for i, s in enumerate(order) if s.startswith("COPY pyproject.toml"))
    install_deps = next(i for i, s in enumerate(order) if "pip install -r" in s)
    copy_src = next(i for i, s in enumerate(order) if s.startswith("COPY src"))
    install_code = next(i for i, s in enumerate(order) if "pip install --no-deps ." in s)
    assert copy_project < install_deps < copy_src < install_code
    copied = [arg for op, arg in steps[:install_deps] if op == "COPY"]
    assert copied == ["pyproject.toml ./"], "only pyproject.toml may come before the deps"


def test_dockerfile_dependency_list_is_the_projects(tmp_path: Path) -> None:
    """Run the image's own extraction command on the real pyproject.toml."""
    run = next(arg for op, arg in dockerfile() if op == "RUN" and "pip install -r" in arg)
    extract = run.split(">", 1)[0].strip()
    m = re.fullmatch(r'python -c "(.*)"', extract)
    assert m, extract
    code = m.group(1)  # in double quotes the shell passes \n on as it is
    assert not re.search(r'\\["$`\\]', code), "shell escapes would change the code"
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    with (ROOT / "pyproject.toml").open("rb") as fp:
        assert out == tomllib.load(fp)["project"]["dependencies"]


def test_dockerfile_has_a_healthcheck_on_the_probe() -> None:
    checks = [arg for op, arg in dockerfile() if op == "HEALTHCHECK"]
    assert len(checks) == 1
    assert 'CMD ["python", "-m", "streamscore.probe", "healthz"]' in checks[0]
    env = " ".join(arg for op, arg in dockerfile() if op == "ENV")
    assert "STREAMSCORE_METRICS_HOST=0.0.0.0" in env


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(where, node) of every dict in the dashboard that names a datasource."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "datasource" in node:
            found.append((path + "/" + str(node.get("title", node.get("refId", ""))), node))
        for key, value in node.items():
            found += walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += walk(item, f"{path}[{i}]")
    return found


def test_dashboard_imports_into_any_grafana() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "streamscore.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    picker = variables["datasource"]
    assert picker["type"] == "datasource" and picker["query"] == "prometheus"
    users = walk(dash)
    panels = [p for p in dash["panels"] if p.get("type") != "row"]
    assert len(users) > len(panels) > 20
    for where, node in users:
        ds = node["datasource"]
        if ds.get("type") == "grafana":  # the built-in annotations
            continue
        assert ds == {"type": "prometheus", "uid": "${datasource}"}, where
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


# -- the container probe, against a real server --------------------------------------------


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def probe(port: int, what: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMSCORE_METRICS_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-m", "streamscore.probe", what],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_probe_exit_code_follows_the_endpoints() -> None:
    clock = Clock()
    status = LoopStatus(stuck_after_s=5.0, clock=clock)
    server = HttpServer("127.0.0.1", 0, status)
    try:
        assert probe(server.port, "healthz").returncode == 0  # starting: live
        not_ready = probe(server.port, "readyz")
        assert not_ready.returncode == 1 and "models are not loaded" in not_ready.stderr
        status.models_loaded("v", restored=False)
        status.running()
        status.batch_done({0})
        assert probe(server.port, "readyz").returncode == 0
        clock.t += 6
        stuck = probe(server.port, "healthz")
        assert stuck.returncode == 1 and "stuck" in stuck.stderr
    finally:
        server.close()
    gone = probe(server.port, "healthz")
    assert gone.returncode == 1 and "Connection refused" in gone.stderr
