"""`lending-ledger export`: the decision record of one application, as JSON or as the HTML
page (api/service/records.py assembles and renders it).

Exit codes: 0 the record was written and verifies, 1 it was written but its verification
found a problem (a chain break, a score that does not reproduce, an invalid proof), 2 a
usage error (malformed or unknown application id, unreadable key, output file).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TextIO
from uuid import UUID

import asyncpg
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from api.cli.common import VerboseOption, exits, settings_from_env
from api.service.embedded import database_url
from api.service.records import DecisionRecord, Format, read_decision_record, render
from api.service.settings import Settings
from ledger.db import connect
from ledger.signing import SigningKeyError, read_public_key

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


async def export_record(
    url: str, application_id: UUID, public_keys: Sequence[Ed25519PublicKey]
) -> DecisionRecord | None:
    connection = await connect(url)
    try:
        return await read_decision_record(connection, application_id, public_keys)
    finally:
        await connection.close()


class OutputFormat(StrEnum):
    JSON = "json"
    HTML = "html"


@exits
def export_command(
    application: Annotated[str, typer.Option(metavar="ID", help="The application's uuid.")],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="JSON, or a self-contained HTML report.")
    ] = OutputFormat.JSON,
    output: Annotated[Path | None, typer.Option(metavar="FILE", help="Default: stdout.")] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            metavar="PEM",
            help="The key seals are verified with (default: the configured signing key's).",
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> int:
    """Write the decision record of one application (JSON or an HTML report).

    The full record: every event with its hashes, the score, decisions and reasons, and the
    record's verification. Exit 0 written and verified, 1 written but the verification found
    a problem, 2 usage error.
    """
    settings = settings_from_env(verbose)
    return run_export(
        settings,
        application=application,
        output_format="html" if output_format is OutputFormat.HTML else "json",
        output=output,
        public_key=public_key,
    )


def run_export(
    settings: Settings,
    *,
    application: str,
    output_format: Format = "json",
    output: Path | None = None,
    public_key: Path | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        application_id = UUID(application)
    except ValueError:
        err.write(f"lending-ledger export: not an application id: {application}\n")
        return EXIT_USAGE
    try:
        if public_key is not None:
            public_keys = [read_public_key(public_key)]
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
    body = render(record, output_format)
    if output is None:
        out.write(body.decode("utf-8"))
        out.flush()
    else:
        try:
            output.write_bytes(body)
        except OSError as error:
            err.write(f"lending-ledger export: cannot write {output}: {error}\n")
            return EXIT_USAGE
    return EXIT_OK if record.verification.ok else EXIT_FINDINGS
