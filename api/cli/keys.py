"""`lending-ledger keys ...`, and the database preparation `serve` does before any worker
starts (the service's login role; the production checks)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import typer

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
from api.service.access import KEY_CACHE_SECONDS, Role, StartupRefused, startup_checks
from api.service.dbrole import ensure_schema, prepare_embedded_database
from api.service.embedded import database_url
from api.service.keystore import ApiKey, create_key, list_keys, revoke_key
from api.service.settings import Settings
from ledger.db import Connection, connect
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


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key's public record: id, name, role, created_at, revoked_at (null while active)."""
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role,
        "created_at": key.created_at.isoformat(),
        "revoked_at": None if key.revoked_at is None else key.revoked_at.isoformat(),
    }


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


KeyAction = Callable[[Connection], Awaitable[int]]


def _run(settings: Settings, action: KeyAction) -> int:
    with database_url(settings.database_url, settings.data_dir) as url:
        return asyncio.run(_on_database(url, action))


async def _on_database(url: str, action: KeyAction) -> int:
    connection = await connect(url)
    try:
        try:
            await ensure_schema(connection)
        except asyncpg.InsufficientPrivilegeError as error:
            fail(str(error))
            return EXIT_FAILED
        return await action(connection)
    finally:
        await connection.close()


keys_app = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys.",
    no_args_is_help=True,
    add_completion=False,
)


@keys_app.command("create")
@exits
def keys_create(
    role: Annotated[Role, typer.Option(help="What the key may do.", case_sensitive=True)],
    name: Annotated[str, typer.Option(help="Who holds it: letters, digits, ._@:-")],
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> int:
    """Create a key and print it (shown only this once; stored only hashed).

    stdout: the key alone, or with --json {"id", "name", "role", "created_at",
    "revoked_at": null, "key"}. Exit 0 created, 2 a name that is refused.
    """
    settings = settings_from_env(verbose)

    async def create(connection: Connection) -> int:
        try:
            record, key = await create_key(connection, name, role.value)
        except InvalidCommand as error:
            fail(f"--name: {error.detail}")
            return EXIT_USAGE
        fail(
            f"created {record.role} key {record.id} for {record.name!r}. "
            "Store it now: it is shown only this once and stored only hashed."
        )
        if as_json:
            write_json({**key_json(record), "key": key})
        else:
            print(key)
        return EXIT_OK

    return _run(settings, create)


@keys_app.command("list")
@exits
def keys_list(as_json: JsonOption = False, verbose: VerboseOption = False) -> int:
    """Every key: id, name, role, created, revoked (never the secret).

    With --json: {"keys": [{"id", "name", "role", "created_at", "revoked_at"}, ...]}.
    """
    settings = settings_from_env(verbose)

    async def listing(connection: Connection) -> int:
        keys = await list_keys(connection)
        if as_json:
            write_json({"keys": [key_json(key) for key in keys]})
        else:
            _print_keys(keys)
        return EXIT_OK

    return _run(settings, listing)


@keys_app.command("revoke")
@exits
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (keys list).")],
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> int:
    """Revoke a key by id; running services refuse it within the key cache's lifetime.

    With --json: the key's record, revoked_at set, and "refused_within_seconds". Exit 0
    revoked, 1 no such key.
    """
    settings = settings_from_env(verbose)

    async def revoke(connection: Connection) -> int:
        revoked = await revoke_key(connection, key_id)
        if revoked is None:
            fail(f"no API key {key_id!r}")
            return EXIT_FAILED
        if as_json:
            write_json({**key_json(revoked), "refused_within_seconds": KEY_CACHE_SECONDS})
        else:
            print(
                f"revoked {revoked.id} ({revoked.role} {revoked.name!r}) at "
                f"{_when(revoked.revoked_at)}; running services refuse it within "
                f"{KEY_CACHE_SECONDS:.0f} s"
            )
        return EXIT_OK

    return _run(settings, revoke)
