"""One settings model for every command: environment variables ``STREAMSCORE_*`` and an
optional TOML file (``STREAMSCORE_CONFIG`` or ``--config``), validated once at start.

Secrets are ``SecretStr``: they print as ``**********`` in logs and errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streamscore.core.alerts import DEFAULT_ACTIONS, AlertPolicy
from streamscore.core.events import EventLimits
from streamscore.core.records import (
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_EVENTS,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
)
from streamscore.core.scorer import ChurnActivity, ScoringConfig
from streamscore.errors import ConfigError

_toml_path: Path | None = None


class Settings(BaseSettings):
    """Everything configurable, with defaults that run against the local stack."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMSCORE_", frozen=True, extra="forbid", env_nested_delimiter="__"
    )

    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_group_id: str = "streamscore"
    kafka_client_id: str = "streamscore"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    input_topic: str = TOPIC_EVENTS
    scores_topic: str = TOPIC_SCORES
    alerts_topic: str = TOPIC_ALERTS
    segments_topic: str = TOPIC_SEGMENTS
    dlq_topic: str = TOPIC_DLQ
    batch_max_records: int = Field(default=2000, ge=1, le=100_000)
    poll_timeout_ms: int = Field(default=200, ge=1)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    due_users_per_batch: int = Field(
        default=500,
        ge=1,
        description="silent users rescored per batch; the rest wait for the next, so a burst "
        "of silences cannot stall fresh events (p99 latency)",
    )
    due_users_per_record: float = Field(
        default=0.5,
        gt=0,
        description="a batch rescores at most this many silent users per input record (and "
        "25 per partition whatever the batch size), so their work grows with the batch "
        "instead of spiking; the average need is about 0.1-0.3 per record",
    )
    session_timeout_ms: int = Field(default=45_000, ge=6_000)
    idle_partition_seconds: float = Field(
        default=120.0,
        ge=0,
        description="after this long without input, a partition's watermark follows the "
        "slowest active partition, so its silent users are still rescored (0: never)",
    )

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    # TLS (with a rediss:// URL): the CA that signed the server's certificate, and a client
    # certificate and key when the server asks for one (tls-auth-clients yes).
    redis_ssl_ca_certs: Path | None = None
    redis_ssl_certfile: Path | None = None
    redis_ssl_keyfile: Path | None = None
    redis_key_prefix: str = "ss"
    state_retention_days: float = Field(default=400.0, gt=0)

    # Scoring semantics
    churn_horizon_days: float = Field(default=14.0, gt=0, le=365)
    value_horizon_days: float = Field(default=30.0, gt=0, le=365)
    snapshot_period_days: float = Field(default=7.0, gt=0)
    allowed_lateness_seconds: float = Field(default=300.0, ge=0)
    max_future_skew_seconds: float = Field(default=300.0, ge=0)
    max_event_bytes: int = Field(default=16_384, ge=256)
    rescore_after_days: tuple[float, ...] = (3.0, 7.0, 14.0, 21.0, 30.0, 45.0, 60.0, 90.0)
    churn_activity: ChurnActivity = ChurnActivity.ANY
    at_risk_threshold: float = Field(default=0.6, gt=0, lt=1)
    alert_raise_at: float = Field(default=0.7, gt=0, lt=1)
    alert_clear_at: float = Field(default=0.5, gt=0, lt=1)
    alert_critical_at: float = Field(default=0.9, gt=0, le=1)
    alert_cooldown_days: float = Field(default=7.0, ge=0)
    alert_min_purchases: int = Field(default=1, ge=0)
    value_tiers: tuple[float, float] = (50.0, 200.0)
    alert_actions: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ACTIONS))

    # Operations
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    checkpoint_interval_seconds: float = Field(default=60.0, gt=0)
    checkpoint_key: SecretStr | None = None
    checkpoint_key_id: str = "k1"
    checkpoint_old_keys: dict[str, SecretStr] = Field(default_factory=dict)
    on_bad_checkpoint: Literal["fail", "fresh"] = "fail"
    dlq_max_ratio: float = Field(default=0.95, gt=0, le=1)
    dlq_window: int = Field(default=1000, ge=10)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.alert_clear_at >= self.alert_raise_at:
            raise ValueError(
                f"alert_clear_at ({self.alert_clear_at}) must be below alert_raise_at "
                f"({self.alert_raise_at}) for the hysteresis to work"
            )
        if not self.rescore_after_days or min(self.rescore_after_days) <= 0:
            raise ValueError("rescore_after_days must be positive numbers of days, e.g. [3, 7, 14]")
        if self.value_tiers[0] >= self.value_tiers[1]:
            raise ValueError("value_tiers must be two increasing spend thresholds, e.g. [50, 200]")
        if self.kafka_sasl_mechanism and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "kafka_sasl_mechanism needs kafka_sasl_username and kafka_sasl_password"
            )
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ValueError(f"{self.kafka_security_protocol} needs kafka_sasl_mechanism")
        redis_tls = (self.redis_ssl_ca_certs, self.redis_ssl_certfile, self.redis_ssl_keyfile)
        if any(redis_tls) and not self.redis_url.startswith("rediss://"):
            raise ValueError(
                "redis_ssl_* settings need a TLS URL: set redis_url to rediss://host:port/db"
            )
        for name, path in (
            ("kafka_ssl_cafile", self.kafka_ssl_cafile),
            ("kafka_ssl_certfile", self.kafka_ssl_certfile),
            ("kafka_ssl_keyfile", self.kafka_ssl_keyfile),
            ("redis_ssl_ca_certs", self.redis_ssl_ca_certs),
            ("redis_ssl_certfile", self.redis_ssl_certfile),
            ("redis_ssl_keyfile", self.redis_ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} is not a readable file")
        for key in self.alert_actions:
            tier, _, risk = key.partition("/")
            if tier not in {"low", "mid", "high"} or risk not in {"high", "critical"}:
                raise ValueError(
                    f"alert_actions key {key!r} must look like '<low|mid|high>/<high|critical>'"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_toml_path))
        return tuple(sources)

    def scoring(self) -> ScoringConfig:
        """The pure core's view of these settings."""
        return ScoringConfig(
            churn_horizon_days=self.churn_horizon_days,
            value_horizon_days=self.value_horizon_days,
            snapshot_period_days=self.snapshot_period_days,
            allowed_lateness_ms=round(self.allowed_lateness_seconds * 1000),
            rescore_after_days=self.rescore_after_days,
            churn_activity=self.churn_activity,
            at_risk_threshold=self.at_risk_threshold,
            alerts=AlertPolicy(
                raise_at=self.alert_raise_at,
                clear_at=self.alert_clear_at,
                critical_at=self.alert_critical_at,
                cooldown_days=self.alert_cooldown_days,
                min_purchases=self.alert_min_purchases,
                value_tiers=self.value_tiers,
                actions=dict(self.alert_actions),
            ),
        )

    def event_limits(self) -> EventLimits:
        """Bounds used by the decoder."""
        return EventLimits(
            max_bytes=self.max_event_bytes,
            max_future_skew_ms=round(self.max_future_skew_seconds * 1000),
        )


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings; raise ``ConfigError`` with one line per problem."""
    global _toml_path  # noqa: PLW0603 - pydantic-settings takes the file path at class level
    path = config_file or (Path(p) if (p := os.environ.get("STREAMSCORE_CONFIG")) else None)
    if path is not None and not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist (from --config or STREAMSCORE_CONFIG)"
        )
    _toml_path = path
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"STREAMSCORE_{str(err['loc'][0]).upper()}" if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {field}{f' ({env})' if env else ''}: {msg}")
        origin = f" (file {path})" if path else ""
        raise ConfigError("invalid settings" + origin + ":\n" + "\n".join(lines)) from None
    except ValueError as exc:  # e.g. malformed TOML
        raise ConfigError(f"cannot read settings from {path}: {exc}") from None
    finally:
        _toml_path = None
