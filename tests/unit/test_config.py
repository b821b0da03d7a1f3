"""Settings: environment variables, a TOML file, clear errors, and secrets that stay secret."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from streamscore.config import Settings, load_settings
from streamscore.core.records import TOPIC_EVENTS
from streamscore.core.values import ChurnActivity
from streamscore.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STREAMSCORE_"):
            monkeypatch.delenv(name)


def config_error(**env: str) -> str:
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(ConfigError) as info:
            load_settings()
        return str(info.value)
    finally:
        mp.undo()


def test_defaults() -> None:
    s = load_settings()
    assert s.churn_horizon_days == 14.0
    assert s.value_horizon_days == 30.0
    assert s.input_topic == TOPIC_EVENTS
    assert s.kafka_sasl_password is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_CHURN_HORIZON_DAYS", "21")
    monkeypatch.setenv("STREAMSCORE_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("STREAMSCORE_RESCORE_AFTER_DAYS", "[2, 5]")
    monkeypatch.setenv("STREAMSCORE_CHURN_ACTIVITY", "purchase")
    monkeypatch.setenv("STREAMSCORE_ALLOWED_LATENESS_SECONDS", "60")
    monkeypatch.setenv("STREAMSCORE_MAX_FUTURE_SKEW_SECONDS", "30")
    s = load_settings()
    assert s.churn_horizon_days == 21.0
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.rescore_after_days == (2.0, 5.0)
    assert s.churn_activity is ChurnActivity.PURCHASE
    scoring = s.scoring()
    assert scoring.churn_horizon_days == 21.0
    assert scoring.allowed_lateness_ms == 60_000
    assert scoring.churn_activity is ChurnActivity.PURCHASE
    assert scoring.rescore_points_ms == (2 * 86_400_000, 5 * 86_400_000, 21 * 86_400_000)
    assert s.event_limits().max_future_skew_ms == 30_000


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "streamscore.toml"
    path.write_text(
        'input_topic = "shop-events"\n'
        "churn_horizon_days = 10\n"
        "value_tiers = [20.0, 80.0]\n"
        "alert_raise_at = 0.8\n"
        "alert_clear_at = 0.6\n"
        "\n"
        "[alert_actions]\n"
        '"high/critical" = "call_them"\n'
    )
    s = load_settings(path)
    assert s.input_topic == "shop-events"
    assert s.churn_horizon_days == 10.0
    assert s.value_tiers == (20.0, 80.0)
    policy = s.scoring().alerts
    assert (policy.raise_at, policy.clear_at) == (0.8, 0.6)
    assert policy.action(0.95, 100.0) == "call_them"
    assert policy.action(0.95, 50.0) == "review"  # the table replaces the default matrix


def test_toml_file_from_streamscore_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.toml"
    path.write_text("value_horizon_days = 45\n")
    monkeypatch.setenv("STREAMSCORE_CONFIG", str(path))
    assert load_settings().value_horizon_days == 45.0


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.toml"
    path.write_text("churn_horizon_days = 10\nvalue_horizon_days = 20\n")
    monkeypatch.setenv("STREAMSCORE_CHURN_HORIZON_DAYS", "12")
    s = load_settings(path)
    assert (s.churn_horizon_days, s.value_horizon_days) == (12.0, 20.0)


def test_the_file_is_not_sticky(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("churn_horizon_days = 10\n")
    assert load_settings(path).churn_horizon_days == 10.0
    assert load_settings().churn_horizon_days == 14.0


def test_overrides_win_and_none_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_CHURN_HORIZON_DAYS", "12")
    s = load_settings(churn_horizon_days=9.0, value_horizon_days=None)
    assert (s.churn_horizon_days, s.value_horizon_days) == (9.0, 30.0)


@pytest.mark.parametrize(
    ("env", "value", "field"),
    [
        ("STREAMSCORE_CHURN_HORIZON_DAYS", "0", "churn_horizon_days"),
        ("STREAMSCORE_CHURN_HORIZON_DAYS", "two weeks", "churn_horizon_days"),
        ("STREAMSCORE_BATCH_MAX_RECORDS", "0", "batch_max_records"),
        ("STREAMSCORE_METRICS_PORT", "70000", "metrics_port"),
        ("STREAMSCORE_LOG_LEVEL", "LOUD", "log_level"),
        ("STREAMSCORE_CHURN_ACTIVITY", "sometimes", "churn_activity"),
        ("STREAMSCORE_ALERT_RAISE_AT", "1.5", "alert_raise_at"),
        ("STREAMSCORE_KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON", "kafka_security_protocol"),
        ("STREAMSCORE_MIN_EVENT_TIME", "1997-01-01", "min_event_time"),
        ("STREAMSCORE_MIN_EVENT_TIME", "852076800000", "min_event_time"),
        ("STREAMSCORE_KAFKA_GROUP_INSTANCE_ID", "pod 7", "kafka_group_instance_id"),
        ("STREAMSCORE_KAFKA_GROUP_INSTANCE_ID", "", "kafka_group_instance_id"),
        ("STREAMSCORE_ON_UNDELIVERABLE_OUTPUT", "retry", "on_undeliverable_output"),
    ],
)
def test_invalid_value_names_field_and_env_var(env: str, value: str, field: str) -> None:
    message = config_error(**{env: value})
    assert "invalid settings" in message
    assert field in message
    assert f"({env})" in message


def test_invalid_item_of_a_list_names_the_real_env_var() -> None:
    message = config_error(STREAMSCORE_RESCORE_AFTER_DAYS='[3, "soon"]')
    assert "rescore_after_days" in message
    named = re.findall(r"\((STREAMSCORE_[A-Za-z0-9_./]+)\)", message)
    assert named == ["STREAMSCORE_RESCORE_AFTER_DAYS"]


def test_every_problem_is_listed() -> None:
    message = config_error(
        STREAMSCORE_CHURN_HORIZON_DAYS="-1", STREAMSCORE_VALUE_HORIZON_DAYS="1000"
    )
    assert "STREAMSCORE_CHURN_HORIZON_DAYS" in message
    assert "STREAMSCORE_VALUE_HORIZON_DAYS" in message


@pytest.mark.parametrize(("clear", "raise_"), [("0.7", "0.7"), ("0.8", "0.7")])
def test_clear_at_must_be_below_raise_at(clear: str, raise_: str) -> None:
    message = config_error(STREAMSCORE_ALERT_CLEAR_AT=clear, STREAMSCORE_ALERT_RAISE_AT=raise_)
    assert "alert_clear_at" in message and "alert_raise_at" in message


def test_value_tiers_must_increase() -> None:
    assert "value_tiers" in config_error(STREAMSCORE_VALUE_TIERS="[200, 50]")


def test_bad_action_matrix_key() -> None:
    message = config_error(STREAMSCORE_ALERT_ACTIONS='{"huge/high": "x"}')
    assert "huge/high" in message


def test_sasl_needs_credentials() -> None:
    message = config_error(STREAMSCORE_KAFKA_SECURITY_PROTOCOL="SASL_SSL")
    assert "kafka_sasl_mechanism" in message


def test_redis_tls_files_need_a_tls_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    message = config_error(STREAMSCORE_REDIS_SSL_CA_CERTS=str(ca))
    assert "rediss://" in message


def test_tls_files_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    message = config_error(
        STREAMSCORE_KAFKA_SECURITY_PROTOCOL="SSL", STREAMSCORE_KAFKA_SSL_CAFILE=str(missing)
    )
    assert "kafka_ssl_cafile" in message and "nowhere.pem" in message
    message = config_error(
        STREAMSCORE_REDIS_URL="rediss://127.0.0.1:6380/0",
        STREAMSCORE_REDIS_SSL_CA_CERTS=str(missing),
    )
    assert "redis_ssl_ca_certs" in message


def test_invalid_toml_value_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("churn_horizon_days = -3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    assert "churn_horizon_days" in message


def test_unknown_key_in_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text("churn_horizon_dayz = 10\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "churn_horizon_dayz" in str(info.value)


def test_malformed_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("churn_horizon_days = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("STREAMSCORE_REDIS_PASSWORD", "hunter2-redis")
    monkeypatch.setenv("STREAMSCORE_CHECKPOINT_KEY", "hunter2-hmac")
    s = load_settings()
    assert s.kafka_sasl_password is not None
    assert s.kafka_sasl_password.get_secret_value() == "hunter2-kafka"
    assert s.redis_password is not None
    assert s.redis_password.get_secret_value() == "hunter2-redis"
    for text in (repr(s), str(s), f"{s}", repr(s.model_dump())):
        assert "hunter2" not in text


def test_secrets_do_not_leak_into_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    # SASL configured without a user name: an error, with the password set.
    message = config_error(
        STREAMSCORE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        STREAMSCORE_KAFKA_SASL_MECHANISM="PLAIN",
        STREAMSCORE_KAFKA_SASL_PASSWORD="hunter2-kafka",
        STREAMSCORE_REDIS_PASSWORD="hunter2-redis",
    )
    assert "kafka_sasl_username" in message
    assert "hunter2" not in message


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValueError):
        s.churn_horizon_days = 3.0  # type: ignore[misc]


def test_min_event_time_sets_the_decoders_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().event_limits().min_event_ms == 946_684_800_000  # 2000-01-01
    monkeypatch.setenv("STREAMSCORE_MIN_EVENT_TIME", "1990-01-01T00:00:00+01:00")
    assert load_settings().event_limits().min_event_ms == 631_148_400_000
