"""`lending-ledger export`: the decision record of one application, as JSON or as the HTML
page (api/service/records.py assembles and renders it).

Exit codes: 0 the record was written and verifies, 1 it was written but its verification
found a problem (a chain break, a score that does not reproduce, an invalid proof), 2 a
usage error (malformed or unknown application id, unreadable key, output file).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO
from uuid import UUID

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.service.embedded import database_url
from api.service.records import DecisionRecord, read_decision_record, render
from api.service.settings import Settings
from ledger.db import connect
from ledger.signing import SigningKeyError, read_public_key

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def add_export_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export",
        help="write the decision record of one application (JSON or an HTML report)",
        description="Write the full decision record of one application: every event with "
        "its hashes, the score, decisions and reasons, and the record's verification. Exit "
        "1 when the verification finds a problem, 2 on a usage error.",
    )
    export.add_argument("--application", metavar="ID", required=True, help="its uuid")
    export.add_argument("--format", choices=["json", "html"], default="json")
    export.add_argument("--output", metavar="FILE", type=Path, help="default: stdout")
    export.add_argument(
        "--public-key",
        metavar="PEM",
        type=Path,
        help="the key seals are verified with (default: the configured signing key's)",
    )


async def export_record(
    url: str, application_id: UUID, public_keys: Sequence[Ed25519PublicKey]
) -> DecisionRecord | None:
    connection = await connect(url)
    try:
        return await read_decision_record(connection, application_id, public_keys)
    finally:
        await connection.close()


def run_export(
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        application_id = UUID(args.application)
    except ValueError:
        err.write(f"lending-ledger export: not an application id: {args.application}\n")
        return EXIT_USAGE
    try:
        if args.public_key is not None:
            public_keys = [read_public_key(args.public_key)]
        elif settings.signing_key_path.exists():
            public_keys = [read_public_key(settings.signing_key_path)]
        else:
            public_keys = []
    except SigningKeyError as error:
        err.write(f"lending-ledger export: {error}\n")
        return EXIT_USAGE
    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            record = asyncio.run(export_record(url, application_id, public_keys))
        except (OSError, asyncpg.PostgresError) as error:
            err.write(f"lending-ledger export: could not read the database: {error}\n")
            return EXIT_USAGE
    if record is None:
        err.write(f"lending-ledger export: no application {application_id}\n")
        return EXIT_USAGE
    body = render(record, args.format)
    if args.output is None:
        out.write(body.decode("utf-8"))
        out.flush()
    else:
        try:
            args.output.write_bytes(body)
        except OSError as error:
            err.write(f"lending-ledger export: cannot write {args.output}: {error}\n")
            return EXIT_USAGE
    return EXIT_OK if record.verification.ok else EXIT_FINDINGS
