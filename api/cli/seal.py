"""`lending-ledger seal`: seal every sequenced event not sealed yet, now, and print the seal.

Prints `{"created": true|false, "seal": {...}}` (the seal in the shape of GET
/audit/seals/latest): `created` is false when every sequenced event was sealed already and
the latest seal is printed. Exit codes: 0 a seal was printed, 1 nothing to seal (the ledger
log is empty) or the stored ledger is inconsistent, 2 the signing key cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from api.jsonio import dumps
from api.service.dbrole import ensure_schema
from api.service.embedded import database_url
from api.service.settings import Settings
from ledger.db import connect
from ledger.errors import LedgerIntegrityError
from ledger.seals import Seal, create_seal, latest_seal, system_clock
from ledger.signing import SigningKey, SigningKeyError, load_or_create_signing_key
from ledger.witness import Witness, witness_for


def add_seal_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands.add_parser(
        "seal",
        help="seal the ledger log now and print the seal",
        description="Seal every sequenced event that no seal covers yet (waiting for a "
        "sealer that is already running), then print the seal as JSON. Uses the key in "
        "LEDGER_SIGNING_KEY_FILE (default <LEDGER_DATA_DIR>/seal-signing-key.pem).",
    )


async def _seal(url: str, key: SigningKey, witness: Witness | None) -> tuple[Seal | None, bool]:
    connection = await connect(url)
    try:
        await ensure_schema(connection)
        async with connection.transaction():
            seal = await create_seal(connection, key, system_clock)
        if seal is not None:
            if witness is not None:
                await witness.record(connection, seal)  # after the commit
            return seal, True
        return await latest_seal(connection), False
    finally:
        await connection.close()


def run_seal(settings: Settings, args: argparse.Namespace) -> int:
    try:
        key = load_or_create_signing_key(settings.signing_key_path)
    except SigningKeyError as error:
        print(f"lending-ledger: signing key: {error}", file=sys.stderr)
        return 2
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            seal, created = asyncio.run(_seal(url, key, witness_for(settings.witness_dir)))
        except LedgerIntegrityError as error:
            print(f"lending-ledger: cannot seal: {error.detail}", file=sys.stderr)
            return 1
    if seal is None:
        print("lending-ledger: nothing to seal: the ledger log is empty", file=sys.stderr)
        return 1
    print(dumps({"created": created, "seal": seal.to_json()}).decode())
    return 0
