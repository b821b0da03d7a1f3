"""Settings people can discover: ``streamscore config``, the README's table, strict names."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from streamscore.cli import main
from streamscore.config import Settings, load_settings
from streamscore.config_check import NON_SETTINGS, NON_SETTINGS_PREFIXES, env_name
from streamscore.errors import ConfigError
from streamscore.settings_doc import MASK, markdown, readme_with_table, rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)


def test_every_setting_has_a_description() -> None:
    missing = [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert missing == []


def test_readme_settings_table_is_generated_from_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_with_table(readme) == readme, (
        "README.md's settings table differs from `streamscore config --markdown`; "
        "run scripts/settings-table"
    )
    for name in Settings.model_fields:
        assert f"| `{name}` |" in readme, name


def test_markdown_lists_defaults_and_escapes_pipes() -> None:
    table = markdown()
    assert "| `churn_horizon_days` | `14` | churn means no activity" in table
    assert "<low\\|mid\\|high>" in table  # a bare | would split the cell


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("STREAMSCORE_CHURN_HORIZON_DAY", "STREAMSCORE_CHURN_HORIZON_DAYS"),
        ("STREAMSCORE_KAFKA_BOOTSTRAP_SERVER", "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS"),
        ("streamscore_alert_rise_at", "STREAMSCORE_ALERT_RAISE_AT"),
    ],
)
def test_unknown_variable_is_refused_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, typo: str, meant: str
) -> None:
    monkeypatch.setenv(typo, "5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert f"{typo}: not a streamscore setting; did you mean {meant}?" in str(info.value)


def test_an_unguessable_variable_points_to_the_config_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMSCORE_ZZZ", "1")
    with pytest.raises(ConfigError, match="`streamscore config` lists them all"):
        load_settings()


def test_nested_and_project_variables_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_CHECKPOINT_OLD_KEYS__k0", "old-secret")
    for name in NON_SETTINGS:
        monkeypatch.setenv(name, "1")
    monkeypatch.delenv("STREAMSCORE_CONFIG")  # would name a file
    monkeypatch.setenv("STREAMSCORE_TEST_ANYTHING", "1")
    s = load_settings()
    assert s.checkpoint_old_keys["k0"].get_secret_value() == "old-secret"


def test_every_project_variable_in_scripts_and_tests_is_known() -> None:
    """A variable added to scripts/stack or the tests must be a setting or allow-listed."""
    fields = {env_name(f) for f in Settings.model_fields}
    used: set[str] = set()
    for folder in ("scripts", "tests", "bench", "src", "examples"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {"", ".py", ".sh", ".toml", ".yml"}:
                text = path.read_text(errors="replace")
                used |= set(re.findall(r"\bSTREAMSCORE_[A-Z0-9_]*[A-Z0-9]\b", text))
    for name in ("Dockerfile", "docker-compose.yml", ".env.example"):
        if (ROOT / name).exists():
            used |= set(
                re.findall(r"\bSTREAMSCORE_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / name).read_text())
            )
    unknown = {
        n
        for n in used
        if n.split("__")[0] not in fields
        and n not in NON_SETTINGS
        and not n.startswith(NON_SETTINGS_PREFIXES)
    }
    # Names in this test file and config_check's own examples are typos on purpose.
    unknown -= {"STREAMSCORE_CHURN_HORIZON_DAY", "STREAMSCORE_KAFKA_BOOTSTRAP_SERVER"}
    unknown -= {"STREAMSCORE_ZZZ", "STREAMSCORE_ALERT_RISE_AT"}
    assert unknown == set()


def test_unknown_toml_key_suggests_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("value_horizon_dayz = 10\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "value_horizon_dayz: not a streamscore setting; did you mean value_horizon_days?" in str(
        info.value
    )


@pytest.mark.parametrize("level", ["info", "Info", "INFO", "debug"])
def test_log_levels_in_any_case(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    monkeypatch.setenv("STREAMSCORE_LOG_LEVEL", level)
    monkeypatch.setenv("STREAMSCORE_KAFKA_LOG_LEVEL", level.lower())
    monkeypatch.setenv("STREAMSCORE_LOG_FORMAT", "JSON")
    s = load_settings()
    assert s.log_level == level.upper() == s.kafka_log_level
    assert s.log_format == "json"


def test_rows_give_sources_and_mask_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.toml"
    path.write_text('input_topic = "shop-events"\nchurn_horizon_days = 10\n')
    monkeypatch.setenv("STREAMSCORE_CHURN_HORIZON_DAYS", "12")
    monkeypatch.setenv("STREAMSCORE_CHECKPOINT_KEY", "hunter2-hmac")
    monkeypatch.setenv("STREAMSCORE_REDIS_URL", "redis://scorer:hunter2-url@redis:6379/0")
    settings = load_settings(path)
    got = {r.name: r for r in rows(settings, path, {"value_horizon_days": 20.0})}
    assert (got["churn_horizon_days"].value, got["churn_horizon_days"].source) == ("12", "env")
    assert (got["input_topic"].value, got["input_topic"].source) == ("shop-events", "file")
    assert got["value_horizon_days"].source == "cli"
    assert (got["batch_max_records"].value, got["batch_max_records"].source) == ("2000", "default")
    assert got["checkpoint_key"].value == MASK
    assert got["redis_url"].value == "redis://scorer:***@redis:6379/0"
    assert got["kafka_sasl_password"].value == "-"
    assert all(r.description for r in got.values())


def test_config_command_prints_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text("churn_horizon_days = 10\n")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    # --config after the command, as well as before it
    assert main(["config", "--config", str(path)]) == 0
    after = capsys.readouterr().out
    assert main(["--config", str(path), "config"]) == 0
    assert capsys.readouterr().out == after
    lines = {line.split()[0]: line for line in after.splitlines()[1:]}
    assert set(lines) == set(Settings.model_fields)
    assert lines["churn_horizon_days"].split()[1:3] == ["10", "file"]
    assert "hunter2" not in after and MASK in lines["kafka_sasl_password"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from streamscore import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"streamscore {__version__}"


def test_run_help_points_at_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "/healthz" in text and "--config" in text
    assert "STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS" in text and "`streamscore config`" in text
