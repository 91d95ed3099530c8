"""`lending-ledger keys ...`, and the database preparation `serve` does before any worker
starts (the service's login role; the production checks)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

import asyncpg

from api.service.access import KEY_CACHE_SECONDS, Role, StartupRefused, startup_checks
from api.service.dbrole import ensure_schema, prepare_embedded_database
from api.service.embedded import database_url
from api.service.keystore import ApiKey, create_key, list_keys, revoke_key
from api.service.settings import Settings
from ledger.db import connect
from ledger.errors import InvalidCommand


def prepare_to_serve(settings: Settings, url: str) -> str:
    """Return the DATABASE_URL the workers get.

    With the embedded database: apply the schema as its superuser, then hand the workers
    the service's login role instead (api/service/dbrole.py). In production: run the start-up
    checks here, once, so that a refusal is one clear message and a non-zero exit rather
    than workers failing one after another (StartupRefused)."""
    if settings.database_url is None:
        url = asyncio.run(prepare_embedded_database(url, settings.data_dir))
    if settings.app_env == "production":
        asyncio.run(_production_checks(url, settings))
    return url


async def _production_checks(url: str, settings: Settings) -> None:
    try:
        connection = await connect(url)
    except (OSError, asyncpg.PostgresError) as error:
        raise StartupRefused(f"cannot reach the database: {error}") from None
    try:
        await ensure_schema(connection)
        await startup_checks(connection, settings)
    except asyncpg.PostgresError as error:
        raise StartupRefused(str(error)) from None
    finally:
        await connection.close()


def add_keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--name", required=True, help="who holds it: letters, digits, ._@:-")
    actions.add_parser("list", help="every key: id, name, role, created, revoked")
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", metavar="ID")


def run_keys(settings: Settings, args: argparse.Namespace) -> int:
    with database_url(settings.database_url, settings.data_dir) as url:
        return asyncio.run(_keys(url, args))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")


def _print_keys(keys: list[ApiKey]) -> None:
    if not keys:
        print("no API keys (the service runs in open mode outside production)")
        return
    rows = [("ID", "NAME", "ROLE", "CREATED", "REVOKED")]
    rows += [(k.id, k.name, k.role, _when(k.created_at), _when(k.revoked_at)) for k in keys]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


async def _keys(url: str, args: argparse.Namespace) -> int:
    connection = await connect(url)
    try:
        try:
            await ensure_schema(connection)
        except asyncpg.InsufficientPrivilegeError as error:
            print(f"lending-ledger: {error}", file=sys.stderr)
            return 1
        if args.keys_command == "create":
            try:
                record, key = await create_key(connection, args.name, args.role)
            except InvalidCommand as error:
                print(f"lending-ledger: --name: {error.detail}", file=sys.stderr)
                return 2
            print(
                f"lending-ledger: created {record.role} key {record.id} for {record.name!r}. "
                "Store it now: it is shown only this once and stored only hashed.",
                file=sys.stderr,
            )
            print(key)
            return 0
        if args.keys_command == "list":
            _print_keys(await list_keys(connection))
            return 0
        revoked = await revoke_key(connection, args.key_id)
        if revoked is None:
            print(f"lending-ledger: no API key {args.key_id!r}", file=sys.stderr)
            return 1
        print(
            f"revoked {revoked.id} ({revoked.role} {revoked.name!r}) at "
            f"{_when(revoked.revoked_at)}; running services refuse it within "
            f"{KEY_CACHE_SECONDS:.0f} s"
        )
        return 0
    finally:
        await connection.close()
