"""One settings model for every command: environment variables ``STREAMSCORE_*`` and an
optional TOML file (``STREAMSCORE_CONFIG`` or ``--config``), validated once at start.

Secrets are ``SecretStr``: they print as ``**********`` in logs and errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streamscore.config_check import env_name, unknown_key_hint, unknown_variables
from streamscore.core.alerts import DEFAULT_ACTIONS, AlertPolicy
from streamscore.core.events import EventLimits
from streamscore.core.records import (
    TOPIC_ALERTS,
    TOPIC_CONFIRMATIONS,
    TOPIC_DLQ,
    TOPIC_ERASURES,
    TOPIC_EVENTS,
    TOPIC_SCORES,
    TOPIC_SEGMENTS,
    TOPIC_TRAINING,
)
from streamscore.core.timeutil import parse_rfc3339
from streamscore.core.values import ChurnActivity, ModelParams, ScoringConfig
from streamscore.errors import ConfigError

_toml_path: Path | None = None


class Settings(BaseSettings):
    """Everything configurable, with defaults that run against the local stack."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMSCORE_", frozen=True, extra="forbid", env_nested_delimiter="__"
    )

    # Kafka
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka brokers, comma-separated host:port"
    )
    kafka_group_id: str = Field(
        default="streamscore",
        description="consumer group; start more processes with the same group to share partitions",
    )
    kafka_group_instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=249,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="static group membership (KIP-345): a unique id per process that stays "
        "the same across its restarts (the pod name, say). A restarted process then gets its "
        "partitions back at once instead of after session_timeout_ms; a process stopped for "
        "good keeps them unassigned until that timeout. Unset: dynamic membership",
    )
    kafka_client_id: str = Field(
        default="streamscore", description="client id the brokers see in their logs and quotas"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism when the protocol is SASL_*"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="PEM file of the CA that signed the brokers' certificates"
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="client certificate (PEM), for brokers that ask for one"
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="private key (PEM) of the client certificate"
    )
    kafka_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="level of kafka-python's own loggers (INFO shows every connection and "
        "group join)",
    )
    input_topic: str = Field(default=TOPIC_EVENTS, description="topic of the user events read")
    scores_topic: str = Field(default=TOPIC_SCORES, description="topic scores are written to")
    alerts_topic: str = Field(default=TOPIC_ALERTS, description="topic churn alerts go to")
    segments_topic: str = Field(
        default=TOPIC_SEGMENTS, description="topic segment and lifecycle changes go to"
    )
    dlq_topic: str = Field(
        default=TOPIC_DLQ,
        description="dead-letter topic for input that breaks the contract",
    )
    training_topic: str = Field(
        default=TOPIC_TRAINING,
        description="topic of what the models learn from (resolved labels, customers at "
        "snapshots; no user ids): one partition, read by the one trainer",
    )
    erasures_topic: str = Field(
        default=TOPIC_ERASURES,
        description="topic of erasure requests (streamscore forget); as many partitions as the "
        "input topic; without it on the broker, run warns and erases nothing",
    )
    confirmations_topic: str = Field(
        default=TOPIC_CONFIRMATIONS, description="topic erasure confirmations go to"
    )
    batch_max_records: int = Field(
        default=2000, ge=1, le=100_000, description="records polled and processed per batch"
    )
    poll_timeout_ms: int = Field(
        default=200, ge=1, description="longest wait of one poll when no record is there"
    )
    batch_linger_ms: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="run and train: once a poll finds records, how long it may wait for more "
        "before the batch starts (never longer; 0: not at all); at moderate rates a fuller "
        "batch shares its fixed costs (flush, save, commit) among more events, for up to this "
        "much latency; the trainer waits this long after a poll that found records before it "
        "polls again (it has no such fixed costs, and a poll is most of its cost)",
    )
    max_poll_interval_ms: int = Field(
        default=300_000,
        ge=10_000,
        description="Kafka evicts a member that does not poll for this long (one batch, "
        "outage retries included)",
    )
    due_users_per_batch: int = Field(
        default=500,
        ge=1,
        description="silent users rescored per batch and partition; the rest wait for the "
        "next, so a burst of silences cannot stall fresh events (users due further behind "
        "the watermark than allowed_lateness_seconds are not left waiting: see "
        "due_users_per_record)",
    )
    due_users_per_record: float = Field(
        default=0.5,
        gt=0,
        description="silent users a batch rescores per input record (at least 25 per "
        "partition, at most due_users_per_batch), so their work grows with the batch "
        "instead of spiking; users due further behind the watermark than "
        "allowed_lateness_seconds are rescored at once (up to batch_max_records per "
        "partition), and while some are left the next batch reads one record at most, "
        "without waiting for it: a label or snapshot taken late would be predicted by "
        "models that learnt from its horizon",
    )
    session_timeout_ms: int = Field(
        default=45_000,
        ge=6_000,
        description="Kafka gives a silent (crashed) member's partitions away after this long; "
        "a dynamic member restarted after a crash waits this long too, unless "
        "kafka_group_instance_id is set",
    )
    on_undeliverable_output: Literal["dead_letter", "log"] = Field(
        default="dead_letter",
        description="what to do with an output record Kafka refuses for good (too large for "
        "the topic, invalid, not authorised): 'dead_letter' sends a small dead letter naming "
        "it and the broker's error; 'log' logs it with its source and skips it. Either way "
        "the batch goes on, and the broker's error is logged",
    )
    on_key_mismatch: Literal["dead_letter", "rekey"] = Field(
        default="dead_letter",
        description="what to do with an input record whose key is not its user_id (or is "
        "null): 'dead_letter' sends a key_mismatch dead letter; 'rekey' produces it again to "
        "the input topic keyed by its user_id (the scorer then needs write access to it), and "
        "applies that copy exactly once",
    )
    idle_partition_seconds: float = Field(
        default=120.0,
        ge=0,
        description="after this long without input, a partition's watermark follows the "
        "slowest active partition, so its silent users are still rescored (0: never)",
    )

    # Redis
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis:// or, for TLS, rediss:// URL of the state store; for a Redis "
        "Cluster redis+cluster://host:port,host:port,... (rediss+cluster:// for TLS): some of "
        "its nodes, any one of which answering is enough to start",
    )
    redis_username: str | None = Field(default=None, description="Redis ACL user name")
    redis_password: SecretStr | None = Field(default=None, description="Redis password")
    redis_ssl_ca_certs: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the Redis server's certificate (rediss://)",
    )
    redis_ssl_certfile: Path | None = Field(
        default=None, description="client certificate (PEM), for Redis with tls-auth-clients"
    )
    redis_ssl_keyfile: Path | None = Field(
        default=None, description="private key (PEM) of the Redis client certificate"
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="replicas of each Redis master that must hold a save before its offsets "
        "are committed (WAIT, in the same round trip); 1 with a replica per master: a "
        "failover loses no committed state, and saves are retried while a master has no "
        "live replica",
    )
    redis_key_prefix: str = Field(
        default="ss", description="prefix of every Redis key (no braces); one per deployment"
    )
    state_retention_days: float = Field(
        default=400.0,
        gt=0,
        description="a user's state expires this long after its last save (their last event "
        "or rescoring), or up to an hour earlier (1 % of this, if less)",
    )
    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="secret (16+ bytes): Redis holds a keyed HMAC token of each user id instead "
        "of the id, and the id sealed with it; outputs still carry the real id. Changing it "
        "orphans every stored state (see README, Privacy)",
    )
    erasure_margin_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description="an erasure mark (which keeps an erased user's older events out) is kept "
        "until the watermark is this much past the erasure time plus the allowed lateness",
    )

    # Scoring semantics
    churn_horizon_days: float = Field(
        default=14.0,
        gt=0,
        le=365,
        description="churn means no activity within this many days after the score",
    )
    value_horizon_days: float = Field(
        default=30.0, gt=0, le=365, description="value means spend within this many days"
    )
    snapshot_period_days: float | None = Field(
        default=None,
        gt=0,
        description="each user is snapshotted for training once per period (long-silent users "
        "sampled and weighted); default: half the churn horizon",
    )
    btyd_sample_size: int = Field(
        default=20_000,
        ge=100,
        description="customers in the sample the buy-till-you-die population model is fitted "
        "to (a uniform sample of distinct customers)",
    )
    btyd_refit_days: float = Field(
        default=7.0,
        gt=0,
        description="days of event time between refits of the buy-till-you-die model",
    )
    replay_batch_span_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="demo and replay: a batch also ends where event time moves further than "
        "this, so a sparse history advances in steps as a live stream would",
    )
    allowed_lateness_seconds: float = Field(
        default=300.0,
        ge=0,
        description="watermark = newest event time minus this; older events are late",
    )
    late_events: Literal["dead_letter", "apply"] = Field(
        default="dead_letter",
        description="what to do with a valid event at or behind its partition's watermark: "
        "'dead_letter' sends a late_event dead letter; 'apply' folds it into the user's "
        "features (a backfill), while labels already learnt stay as they are and no "
        "snapshot or silence before the watermark is taken again",
    )
    watermark_max_lead_seconds: float = Field(
        default=0.0,
        ge=0,
        description="an event further than this ahead of its partition's stream is applied "
        "but moves the watermark only when far-ahead events in a row come from "
        "watermark_agreeing_users users, so one wrong clock cannot make the events after it "
        "late (0, the default: every event moves it; 3600 is a sound value for a stream of many "
        "users)",
    )
    watermark_agreeing_users: int = Field(
        default=2,
        ge=2,
        le=1000,
        description="users whose far-ahead events (see watermark_max_lead_seconds), in a row, "
        "move the watermark, to the earliest of them",
    )
    max_future_skew_seconds: float = Field(
        default=300.0,
        ge=0,
        description="events further than this ahead of the wall clock are dead-lettered",
    )
    max_event_bytes: int = Field(
        default=16_384,
        ge=256,
        description="larger input records are dead-lettered as too_large (their dead letter "
        "keeps the first 16 KiB, the size and a SHA-256 of the whole value)",
    )
    min_event_time: str = Field(
        default="2000-01-01T00:00:00Z",
        description="events before this RFC 3339 time are dead-lettered as past_timestamp: a "
        "sanity bound against epoch seconds or zeroed clocks; lower it to replay older "
        "history",
    )
    rescore_after_days: tuple[float, ...] = Field(
        default=(3.0, 7.0, 14.0, 21.0, 30.0, 45.0, 60.0, 90.0),
        description="days of silence after which a quiet user is rescored (the churn "
        "horizon is always one)",
    )
    churn_activity: ChurnActivity = Field(
        default=ChurnActivity.ANY,
        description="'any': churn is no event within the horizon; 'purchase': no purchase",
    )
    at_risk_threshold: float = Field(
        default=0.6,
        gt=0,
        lt=1,
        description="churn probability from which a customer's lifecycle stage is 'at risk'",
    )
    alert_raise_at: float = Field(
        default=0.7, gt=0, lt=1, description="churn probability that raises an alert"
    )
    alert_clear_at: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="an alerted user is re-armed only after falling below this (hysteresis)",
    )
    alert_critical_at: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="churn probability from which an alert's risk is 'critical', not 'high'",
    )
    alert_cooldown_days: float = Field(
        default=7.0, ge=0, description="at most one alert per user per this many days"
    )
    alert_min_purchases: int = Field(
        default=1, ge=0, description="users with fewer purchases raise no alert"
    )
    value_tiers: tuple[float, float] = Field(
        default=(50.0, 200.0),
        description="predicted-value thresholds of the mid and high tiers of alert_actions",
    )
    alert_actions: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ACTIONS),
        description="recommended action by '<low|mid|high>/<high|critical>' (value tier / "
        "risk); a missing key means 'review'",
    )
    explain_scores: bool = Field(
        default=False,
        description="every user-scores record carries both scores' additive contributions "
        "(churn alerts always do); costs about a score's time again",
    )

    # Operations
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address of the HTTP server (/metrics, /healthz, /readyz); 0.0.0.0 in "
        "containers",
    )
    metrics_port: int = Field(
        default=9108, ge=0, le=65535, description="port of that HTTP server (0: no server)"
    )
    health_stuck_after_polls: int = Field(
        default=150,
        ge=1,
        description="/healthz fails once the loop has neither finished a batch nor retried "
        "a failing step for this many poll timeouts (150 × 200 ms = 30 s); keep it above "
        "15 s, since retries back off up to 10 s and a poll waits up to 10 s for a group join",
    )
    run_trainer: bool = Field(
        default=True,
        description="run also joins the trainer's consumer group (<kafka_group_id>-trainer): "
        "the one process that owns training-examples' partition trains the models for all. "
        "false: this process only scores (run `streamscore train` elsewhere)",
    )
    checkpoint_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description="seconds between the model versions the trainer publishes (signed "
        "checkpoints of the lineage, with the training-examples offset they reflect)",
    )
    model_staleness_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="scorers look for a newer published model version this often (one small "
        "Redis read) and score with it from the next batch",
    )
    training_dedupe_window: int = Field(
        default=200_000,
        ge=0,
        description="labels and snapshots the trainer remembers the ids of, to drop a record "
        "published twice (a scorer that crashed after flushing redoes its batch); part of "
        "the lineage's checkpoint, 8 bytes each",
    )
    checkpoint_key: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key that signs the published model versions; run and train "
        "need it, the same in every process",
    )
    checkpoint_key_id: str = Field(
        default="k1", description="id stored with each checkpoint, naming the key that signed it"
    )
    checkpoint_old_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="earlier keys by id, still accepted when restoring (key rotation)",
    )
    on_bad_checkpoint: Literal["fail", "fresh"] = Field(
        default="fail",
        description="what a tampered or unverifiable checkpoint does: stop, or start fresh models",
    )
    dlq_max_ratio: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="stop when more than this share of a window of input is dead-lettered",
    )
    dlq_window: int = Field(
        default=1000, ge=10, description="records per window of the dead-letter limit"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="level of streamscore's own log (any case)"
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'json': one JSON object per line, with the batch's partitions and offsets",
    )

    @field_validator("log_level", "kafka_log_level", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("min_event_time")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        parse_rfc3339(value)  # a ValueError here names the setting
        return value

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
        if self.checkpoint_key is not None and not self.checkpoint_key.get_secret_value():
            raise ValueError(
                "checkpoint_key is empty: set a long random string (openssl rand -hex 32), "
                "or leave it unset to run without checkpoints"
            )
        if self.kafka_sasl_mechanism and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "kafka_sasl_mechanism needs kafka_sasl_username and kafka_sasl_password"
            )
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ValueError(f"{self.kafka_security_protocol} needs kafka_sasl_mechanism")
        redis_tls = (self.redis_ssl_ca_certs, self.redis_ssl_certfile, self.redis_ssl_keyfile)
        if any(redis_tls) and not self.redis_url.startswith(("rediss://", "rediss+cluster://")):
            raise ValueError(
                "redis_ssl_* settings need a TLS URL: set redis_url to rediss://host:port/db "
                "(rediss+cluster://host:port,host:port for a Redis Cluster)"
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

    @property
    def snapshot_period(self) -> float:
        """Days between a user's training snapshots (``snapshot_period_days`` or its default)."""
        if self.snapshot_period_days is not None:
            return self.snapshot_period_days
        return self.churn_horizon_days / 2

    def model_params(self) -> ModelParams:
        """What the models predict and how they learn."""
        return ModelParams(
            churn_horizon_days=self.churn_horizon_days,
            value_horizon_days=self.value_horizon_days,
            purchase_activity=self.churn_activity is ChurnActivity.PURCHASE,
            sample_size=self.btyd_sample_size,
            refit_days=self.btyd_refit_days,
        )

    def scoring(self) -> ScoringConfig:
        """The pure core's view of these settings."""
        return ScoringConfig(
            churn_horizon_days=self.churn_horizon_days,
            value_horizon_days=self.value_horizon_days,
            snapshot_period_days=self.snapshot_period,
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
            explain_scores=self.explain_scores,
        )

    def event_limits(self) -> EventLimits:
        """Bounds used by the decoder."""
        return EventLimits(
            max_bytes=self.max_event_bytes,
            max_future_skew_ms=round(self.max_future_skew_seconds * 1000),
            min_event_ms=parse_rfc3339(self.min_event_time),
        )


def config_path(config_file: Path | None = None) -> Path | None:
    """The settings file in use: ``--config``, else ``STREAMSCORE_CONFIG``, else none."""
    return config_file or (Path(p) if (p := os.environ.get("STREAMSCORE_CONFIG")) else None)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings; raise ``ConfigError`` with one line per problem."""
    global _toml_path  # noqa: PLW0603 - pydantic-settings takes the file path at class level
    path = config_path(config_file)
    if path is not None and not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what} (from --config or STREAMSCORE_CONFIG)")
    fields = Settings.model_fields
    unknown = unknown_variables(os.environ, fields)
    if unknown:
        raise ConfigError("unknown environment variables:\n" + "\n".join(unknown))
    _toml_path = path
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            env = env_name(str(err["loc"][0])) if err["loc"] else ""
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden" and err["loc"]:
                lines.append(
                    f"  {field}: not a streamscore setting{unknown_key_hint(field, fields)}"
                )
                continue
            lines.append(f"  {field}{f' ({env})' if env else ''}: {msg}")
        origin = f" (file {path})" if path else ""
        raise ConfigError("invalid settings" + origin + ":\n" + "\n".join(lines)) from None
    except ValueError as exc:  # e.g. malformed TOML
        raise ConfigError(f"cannot read settings from {path}: {exc}") from None
    finally:
        _toml_path = None
