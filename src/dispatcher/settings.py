"""One typed settings object. Sources, later ones winning: defaults, a TOML config file,
environment variables (DISPATCHER_*), command-line flags."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher.domain.rules import SchedulingRules
from dispatcher.domain.validation import Limits
from dispatcher.lifecycle.context import Deadlines
from dispatcher.store.database import DEFAULT_URL


class LimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent."
    )
    max_labels: int = Field(64, ge=1, description="Labels per job or runner.")
    max_payload_bytes: int = Field(1024 * 1024, ge=0, description="Job payload size.")
    max_batch_size: int = Field(1000, ge=1, description="Jobs per SubmitJobs call.")
    max_streams_per_token: int = Field(
        100, ge=1, description="Open Scheduler.Connect streams per token, on each replica."
    )

    def domain(self) -> Limits:
        return Limits(
            max_labels=self.max_labels,
            max_payload_bytes=self.max_payload_bytes,
            max_batch_size=self.max_batch_size,
        )


class RuleSettings(BaseModel):
    """Farm-wide settings of the scheduling rules (SPEC §5)."""

    model_config = ConfigDict(extra="forbid")

    replay_slop_seconds: float = Field(
        300.0,
        ge=0,
        description="A submission whose origin_time is further in the future than "
        "this is NOT_FOR_US (replay window).",
    )
    replay_max_age_seconds: float = Field(
        7 * 86400.0,
        gt=0,
        description="A submission whose origin_time is older than this is NOT_FOR_US "
        "(replay window).",
    )
    retention_seconds: float = Field(
        30 * 86400.0,
        gt=0,
        description="Finished jobs are deleted this long after they finished; must be "
        "at least replay_max_age_seconds.",
    )
    quarantine_after: int = Field(
        3,
        ge=1,
        description="A runner that loses (or refuses) this many executions in a row is "
        "quarantined: it gets no work for a while.",
    )
    quarantine_base_seconds: float = Field(
        30.0, gt=0, description="First quarantine; each next one in a row doubles."
    )
    quarantine_max_seconds: float = Field(3600.0, gt=0, description="Longest quarantine.")

    def domain(self) -> SchedulingRules:
        return SchedulingRules(
            replay_slop=timedelta(seconds=self.replay_slop_seconds),
            replay_max_age=timedelta(seconds=self.replay_max_age_seconds),
            retention=timedelta(seconds=self.retention_seconds),
            quarantine_after=self.quarantine_after,
            quarantine_base=timedelta(seconds=self.quarantine_base_seconds),
            quarantine_max=timedelta(seconds=self.quarantine_max_seconds),
        )


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cache_seconds: float = Field(
        2.0,
        ge=0,
        description="How long a replica trusts a verified token without reading the "
        "database again. A token deleted through another replica keeps working there "
        "for new calls for at most this long (0: read on every call).",
    )
    stream_recheck_seconds: float = Field(
        2.0,
        gt=0,
        description="How often a replica checks that the tokens of its open streams "
        "still exist; a deleted token's streams close within this time.",
    )


class TlsSettings(BaseModel):
    """Plaintext when ``cert_file`` is unset; mutual TLS when ``client_ca_file`` is set."""

    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = Field(
        None, description="Server certificate chain (PEM); set with key_file to serve TLS."
    )
    key_file: Path | None = Field(None, description="The certificate's private key (PEM).")
    client_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM): when set, every client must present a certificate "
        "signed by it (mutual TLS), in addition to its token.",
    )

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together: set both or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mutual TLS) needs tls.cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class DistributorSettings(BaseModel):
    """One distributor instance (SPEC §7): ``[distributors.NAME]``. The keys below are the
    dispatcher's own; every other key is the adapter's config, checked by the adapter."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(description="The adapter: an entry point of dispatcher.distributors.")
    parallelism: int = Field(4, ge=1, description="Executions running at once, at most.")
    poll_interval_seconds: float = Field(
        30.0, gt=0, description="After the first poll, get_status is called this often."
    )
    settle_seconds: float = Field(
        30.0,
        ge=0,
        description="A permanent get_status error this soon after run counts as transient.",
    )
    run_attempts: int = Field(
        3, ge=1, description="Tries of run (and cancel) on transient errors before giving up."
    )
    probe_initial_seconds: float = Field(
        1.0, gt=0, description="While the backend is down, the first probe waits this long."
    )
    probe_max_seconds: float = Field(
        300.0, gt=0, description="Each next probe waits twice as long, up to this."
    )

    def adapter_config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_", env_nested_delimiter="__", extra="forbid"
    )

    database_url: str = Field(
        DEFAULT_URL,
        description="SQLAlchemy URL. Default: a SQLite file in the working directory. "
        "PostgreSQL: postgresql+psycopg2://user@host:5432/dbname",
    )
    listen: str = Field("127.0.0.1:50051", description="gRPC address, host:port (port 0: any).")
    heartbeat_interval_seconds: float = Field(
        10.0, gt=0, description="How often runners send heartbeats (told to them in Welcome)."
    )
    heartbeat_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A runner session silent for this long is dead: its jobs "
        "follow their on-lost policy.",
    )
    idle_heartbeat_interval_seconds: float = Field(
        600.0,
        ge=0,
        description="How often a runner holding no executions sends heartbeats (told to "
        "it in Welcome; 0: as heartbeat_interval_seconds). Keepalive pings find dead "
        "peers meanwhile; fewer messages keep many idle runners cheap.",
    )
    idle_heartbeat_timeout_seconds: float = Field(
        1800.0,
        gt=0,
        description="A runner session holding no executions is dead after this long "
        "without a message (never less than heartbeat_timeout_seconds).",
    )
    reattach_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="A runner whose stream broke (or whose dispatcher restarted) "
        "may re-attach to its jobs for this long before they follow their on-lost policy.",
    )
    accept_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="An assignment not accepted by its runner in this time is "
        "taken back and queued again.",
    )
    cancel_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="A cancelled BUILDING job whose runner does not confirm in "
        "this time is forced CANCELLED.",
    )
    replica_lease_seconds: float = Field(
        15.0,
        gt=0,
        description="How long this replica's liveness row stays valid unrenewed; "
        "after it, survivors take over its runners' jobs.",
    )
    migrate_on_start: bool | None = Field(
        None,
        description="Apply pending migrations at start-up. Default: yes on SQLite, "
        "no on PostgreSQL (run `dispatcher migrate` as a deploy step).",
    )
    shutdown_grace_seconds: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, how long running jobs may finish (nothing new "
        "is assigned) before streams are cut; runners then re-attach elsewhere.",
    )
    http_listen: str = Field(
        "127.0.0.1:8080",
        description="Status page, /metrics and /healthz address, host:port (port 0: any); "
        'empty ("") turns the HTTP listener off.',
    )
    http_open: bool = Field(
        True,
        description="Serve the status page and /metrics without an admin token. Allowed "
        "only when http_listen is a loopback address; the dispatcher refuses to start "
        "otherwise.",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log lines: json (one object per line), text (for people), or auto: "
        "text when stderr is a terminal, json otherwise.",
    )
    limits: LimitSettings = Field(default_factory=lambda: LimitSettings())
    rules: RuleSettings = Field(default_factory=lambda: RuleSettings())
    auth: AuthSettings = Field(default_factory=lambda: AuthSettings())
    tls: TlsSettings = Field(default_factory=lambda: TlsSettings())
    distributors: dict[str, DistributorSettings] = Field(
        default_factory=dict,
        description="Distributor instances by name (SPEC §7); the runner pool is always there.",
    )

    @property
    def heartbeat_interval(self) -> timedelta:
        return timedelta(seconds=self.heartbeat_interval_seconds)

    @property
    def idle_heartbeat_interval(self) -> timedelta:
        seconds = max(self.idle_heartbeat_interval_seconds, self.heartbeat_interval_seconds)
        return timedelta(seconds=seconds)

    def deadlines(self) -> Deadlines:
        return Deadlines(
            heartbeat_timeout=timedelta(seconds=self.heartbeat_timeout_seconds),
            idle_heartbeat_timeout=timedelta(
                seconds=max(self.idle_heartbeat_timeout_seconds, self.heartbeat_timeout_seconds)
            ),
            reattach_grace=timedelta(seconds=self.reattach_grace_seconds),
            accept_timeout=timedelta(seconds=self.accept_timeout_seconds),
            cancel_grace=timedelta(seconds=self.cancel_grace_seconds),
            replica_lease=timedelta(seconds=self.replica_lease_seconds),
        )

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> Settings:
        """Settings from an optional TOML file, the environment, then ``overrides``."""
        values: dict[str, Any] = {}
        if path is not None:
            with path.open("rb") as f:
                values = tomllib.load(f)
        settings = cls(**values)
        return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
