"""A streaming replica of a private cluster (tests/support/faults.py): `pg_basebackup -R`
with the same binaries as the embedded server, started on a free loopback port in a
temporary directory; stopped (killed if need be) and deleted afterwards."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.support.faults import CLUSTER_COMMAND_TIMEOUT, POSTGRES_BIN, Cluster, free_port


def base_backup(primary: Cluster, replica: Cluster) -> None:
    """Copy the primary into `replica.data` over the replication protocol, with the WAL it
    needs (-X stream) and the settings that make it a standby of the primary (-R)."""
    command = [
        str(POSTGRES_BIN / "pg_basebackup"),
        "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
        "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast", "--no-sync",
    ]  # fmt: skip
    if replica.user is not None:
        command = ["runuser", "-u", replica.user, "--", *command]
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=CLUSTER_COMMAND_TIMEOUT, check=False
    )
    assert finished.returncode == 0, f"pg_basebackup failed:\n{finished.stdout}{finished.stderr}"


@asynccontextmanager
async def streaming_replica(primary: Cluster) -> AsyncIterator[Cluster]:
    """The primary's default settings suffice: wal_level=replica and max_wal_senders=10 are
    PostgreSQL's defaults, and initdb's pg_hba.conf (--auth=trust) lets the superuser
    `postgres` replicate from 127.0.0.1."""
    root = Path(tempfile.mkdtemp(prefix="ledger-replica-", dir="/tmp"))
    replica = Cluster(root, free_port())
    try:
        if replica.user is not None:
            shutil.chown(root, replica.user, replica.user)
        await asyncio.to_thread(base_backup, primary, replica)
        await replica.start()
        yield replica
    finally:
        try:
            if (replica.data / "postmaster.pid").exists():
                await replica.stop("immediate")
        finally:
            replica.kill()
            shutil.rmtree(root, ignore_errors=True)
