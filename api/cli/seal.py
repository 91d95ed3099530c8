"""`lending-ledger seal`: seal every sequenced event not sealed yet, now, and print the seal.

Prints `{"created": true|false, "seal": {...}}`, with or without `--json` (the seal in the
shape of GET /audit/seals/latest): `created` is false when every sequenced event was sealed
already and the latest seal is printed. Exit codes: 0 a seal was printed, 1 nothing to seal
(the ledger log is empty) or the stored ledger is inconsistent, 2 the signing key cannot be
used.
"""

from __future__ import annotations

import asyncio

from api.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JsonOption,
    VerboseOption,
    exits,
    fail,
    settings_from_env,
    write_json,
)
from api.service.dbrole import ensure_schema
from api.service.embedded import database_url
from ledger.db import connect
from ledger.errors import LedgerIntegrityError
from ledger.seals import Seal, create_seal, latest_seal, system_clock
from ledger.signing import SigningKey, SigningKeyError, load_or_create_signing_key
from ledger.witness import Witness, witness_for


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


@exits
def seal_command(as_json: JsonOption = False, verbose: VerboseOption = False) -> int:
    """Seal the ledger log now and print the seal as JSON.

    Seals every sequenced event that no seal covers yet (waiting for a sealer that is
    already running), with the key in LEDGER_SIGNING_KEY_FILE (default
    <LEDGER_DATA_DIR>/seal-signing-key.pem). stdout: {"created": true|false, "seal": {...}}
    with or without --json. Exit 0 a seal was printed, 1 nothing to seal or an inconsistent
    ledger, 2 the signing key cannot be used.
    """
    del as_json  # the output is always the one JSON document
    settings = settings_from_env(verbose)
    try:
        key = load_or_create_signing_key(settings.signing_key_path)
    except SigningKeyError as error:
        fail(f"signing key: {error}")
        return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            seal, created = asyncio.run(_seal(url, key, witness_for(settings.witness_dir)))
        except LedgerIntegrityError as error:
            fail(f"cannot seal: {error.detail}")
            return EXIT_FAILED
    if seal is None:
        fail("nothing to seal: the ledger log is empty")
        return EXIT_FAILED
    write_json({"created": created, "seal": seal.to_json()})
    return EXIT_OK
