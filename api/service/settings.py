"""Configuration, read from the environment once, when the app or CLI starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ledger.scoring import DEFAULT_MODEL, get_model

ENVIRONMENTS = ("development", "test", "production")

# `lending-ledger serve` sets it to false for its workers: it runs the sequencer in a
# process of its own beside them (api/service/sequencer_process.py).
SEQUENCER_IN_WORKERS_ENV = "LEDGER_SEQUENCER_IN_WORKERS"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lending-ledger"


class ConfigurationError(Exception):
    pass


def _int(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be from {low} to {high}, got {value}")
    return value


def _bool(env: dict[str, str], name: str, *, default: bool = False) -> bool:
    raw = (env.get(name) or str(default)).strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigurationError(f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    app_env: str = "development"
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    pool_size: int = 10
    scoring_model: str = DEFAULT_MODEL
    max_body_bytes: int = 64 * 1024
    # How long an Idempotency-Key is remembered (docs/api.md, "Idempotency").
    idempotency_retention: timedelta = timedelta(hours=24)
    # Production refuses a database role that can rewrite the ledger unless this is set
    # (docs/operations.md, "The database role").
    allow_privileged_database_role: bool = False
    # The Ed25519 key that signs seals; None: <data_dir>/seal-signing-key.pem. Generated on
    # first start when absent (docs/operations.md, "Seals").
    signing_key_file: Path | None = None
    # Seconds between background seals (when new events exist); 0 turns the sealer off.
    seal_interval_seconds: int = 60
    # The sequencer seals what it logs at most this often (ms; 0 turns it off), so events
    # are signed about a second after they commit (docs/architecture.md, "Seals and proofs").
    batch_seal_interval_ms: int = 1000
    # A directory outside the database every seal is also written to (ledger/witness.py).
    witness_dir: Path | None = None
    # /readyz says 503 when the oldest committed event still without a seq has waited longer
    # than this (docs/operations.md, "Health and readiness"); 0 turns the lag check off.
    ready_max_sequencer_lag_seconds: int = 30
    # Scale-out (docs/operations.md, "Scale-out"): a streaming replica for reads that may
    # lag; a direct (not pooled by pgBouncer) URL for the session-level work: the
    # sequencer's advisory lock, the live feed's LISTEN and applying the schema; asyncpg's
    # prepared statement cache (0 behind pgBouncer in transaction mode before 1.21).
    read_database_url: str | None = None
    direct_database_url: str | None = None
    statement_cache_size: int = 100
    # How long a read sent with X-Min-LSN waits for the replica before reading the primary.
    read_min_lsn_wait_ms: int = 1000
    # One JSON line per request (api.web.access) at INFO (docs/operations.md, "Logs").
    access_log: bool = True
    # Serve the hot routes without the framework's per-request machinery (api/web/hot.py).
    hot_path: bool = True
    # Whether this process runs a sequencer (in a thread of its own) beside the app. False
    # only where another process sequences (`serve` runs one beside its workers).
    sequencer_in_workers: bool = True

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "seal-signing-key.pem"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        app_env = env.get("APP_ENV", "development") or "development"
        if app_env not in ENVIRONMENTS:
            raise ConfigurationError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}")
        scoring_model = env.get("LEDGER_SCORING_MODEL") or DEFAULT_MODEL
        try:
            get_model(scoring_model)
        except ValueError as error:
            raise ConfigurationError(f"LEDGER_SCORING_MODEL: {error}") from None
        data_dir = env.get("LEDGER_DATA_DIR")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            app_env=app_env,
            data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
            host=env.get("LEDGER_HOST") or "127.0.0.1",
            port=_int(env, "LEDGER_PORT", 8000, 0, 65535),
            workers=_int(env, "LEDGER_WORKERS", 1, 1, 64),
            pool_size=_int(env, "LEDGER_DB_POOL_SIZE", 10, 1, 200),
            scoring_model=scoring_model,
            max_body_bytes=_int(env, "LEDGER_MAX_BODY_BYTES", 64 * 1024, 1024, 16 * 1024 * 1024),
            idempotency_retention=timedelta(
                hours=_int(env, "LEDGER_IDEMPOTENCY_RETENTION_HOURS", 24, 1, 24 * 366)
            ),
            allow_privileged_database_role=_bool(env, "LEDGER_ALLOW_PRIVILEGED_DB_ROLE"),
            signing_key_file=(
                Path(env["LEDGER_SIGNING_KEY_FILE"]).expanduser()
                if env.get("LEDGER_SIGNING_KEY_FILE")
                else None
            ),
            seal_interval_seconds=_int(env, "LEDGER_SEAL_INTERVAL_SECONDS", 60, 0, 7 * 24 * 3600),
            batch_seal_interval_ms=_int(env, "LEDGER_BATCH_SEAL_INTERVAL_MS", 1000, 0, 3_600_000),
            witness_dir=Path(env["LEDGER_WITNESS_DIR"]) if env.get("LEDGER_WITNESS_DIR") else None,
            ready_max_sequencer_lag_seconds=_int(
                env, "LEDGER_READY_MAX_SEQUENCER_LAG_SECONDS", 30, 0, 24 * 3600
            ),
            read_database_url=env.get("LEDGER_READ_DATABASE_URL") or None,
            direct_database_url=env.get("LEDGER_DIRECT_DATABASE_URL") or None,
            statement_cache_size=_int(env, "LEDGER_DB_STATEMENT_CACHE_SIZE", 100, 0, 100_000),
            read_min_lsn_wait_ms=_int(env, "LEDGER_READ_MIN_LSN_WAIT_MS", 1000, 0, 60_000),
            access_log=_bool(env, "LEDGER_ACCESS_LOG", default=True),
            hot_path=_bool(env, "LEDGER_HOT_PATH", default=True),
            sequencer_in_workers=_bool(env, SEQUENCER_IN_WORKERS_ENV, default=True),
        )
