"""The database role the service connects as, and the schema at start-up.

schema.sql creates the NOLOGIN group role `lending_ledger_app` with exactly the privileges
the service needs (INSERT and SELECT on the ledger, no UPDATE, DELETE or TRUNCATE). The
service logs in as a member of it:

- with the embedded database, `lending-ledger serve` applies the schema as the superuser,
  then creates or updates the login role `lending_ledger_service` (its password kept in
  the data directory, mode 0600) and hands the workers a DATABASE_URL for that role;
- with DATABASE_URL set, the operator creates the login role (docs/operations.md).

A role that cannot apply schema.sql (it does not own the tables) checks instead that the
database's schema is the one this version ships (`schema_applied`, written by every
application), and is refused until the owner has run `lending-ledger migrate`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from ledger.db import Connection, connect
from ledger.schema import apply_schema, schema_digest

APP_GROUP_ROLE = "lending_ledger_app"
EMBEDDED_SERVICE_ROLE = "lending_ledger_service"
CREDENTIAL_FILE = "service-role-password"


# --- Named SQL of the database role; values only ever as $n ---

# The schema may be applied by this role when nothing is there yet, or when it owns the
# event table (superusers count as members of every role).
CAN_APPLY_SCHEMA = """
SELECT coalesce(
    (SELECT pg_has_role(current_user, c.relowner, 'USAGE')
     FROM pg_class c WHERE c.oid = to_regclass('public.events')),
    true
)
"""

SELECT_SCHEMA_DIGEST = "SELECT sha256 FROM schema_applied WHERE singleton"

# The privileges on the ledger tables that the service must never have.
LEDGER_REWRITE_PRIVILEGES = """
SELECT t.name || ': ' || p.privilege
FROM unnest(ARRAY['events', 'ledger_log']) AS t(name)
CROSS JOIN unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE']) AS p(privilege)
WHERE to_regclass('public.' || t.name) IS NOT NULL
  AND has_table_privilege(current_user, 'public.' || t.name, p.privilege)
ORDER BY 1
"""

CURRENT_ROLE = "SELECT current_user::text"

ROLE_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)"

# Role statements take no bind parameters, so PostgreSQL quotes the name and the password
# itself (format's %I and %L); the resulting statement is then run as it is.
CREATE_LOGIN_ROLE = "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)"
ALTER_LOGIN_ROLE = "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)"
GRANT_GROUP_ROLE = "SELECT format('GRANT %I TO %I', $1::text, $2::text)"


class SchemaNotCurrent(asyncpg.InsufficientPrivilegeError):
    """This role may not apply schema.sql, and the database does not have this version's.

    An insufficient_privilege error, so the service's start-up treats it like any other
    failure to apply the schema: not ready, retrying, until the owner migrates."""


async def ensure_schema(connection: Connection) -> bool:
    """Apply schema.sql if this role may; otherwise insist that it is current.

    True when it was applied here, False when it was already current."""
    if await connection.fetchval(CAN_APPLY_SCHEMA):
        await apply_schema(connection)
        return True
    try:
        applied = await connection.fetchval(SELECT_SCHEMA_DIGEST)
    except asyncpg.UndefinedTableError:
        applied = None
    if applied is None or bytes(applied) != schema_digest():
        role = await current_role(connection)
        raise SchemaNotCurrent(
            f"the database role {role!r} may not apply schema.sql and the database does not "
            "have this version's schema: run `lending-ledger migrate` with the schema "
            "owner's DATABASE_URL"
        )
    return False


async def ledger_rewrite_privileges(connection: Connection) -> list[str]:
    """What the connected role could do to rewrite history, e.g. ["events: UPDATE"]; []
    for the intended service role."""
    return [row[0] for row in await connection.fetch(LEDGER_REWRITE_PRIVILEGES)]


async def current_role(connection: Connection) -> str:
    role: str = await connection.fetchval(CURRENT_ROLE)
    return role


async def ensure_login_role(connection: Connection, name: str, password: str) -> None:
    """Create (or update the password of) a LOGIN role that is a member of the app role.

    Needs a role that may create roles (the embedded superuser)."""
    exists = await connection.fetchval(ROLE_EXISTS, name)
    statement = ALTER_LOGIN_ROLE if exists else CREATE_LOGIN_ROLE
    await connection.execute(await connection.fetchval(statement, name, password))
    await connection.execute(await connection.fetchval(GRANT_GROUP_ROLE, APP_GROUP_ROLE, name))


def service_password(data_dir: Path) -> str:
    """The embedded service role's password: made once, kept in the data directory (0600)."""
    path = data_dir / CREDENTIAL_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        password = path.read_text(encoding="ascii").strip()
        if password:
            return password
        descriptor = os.open(path, os.O_WRONLY | os.O_TRUNC)
    password = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(password + "\n")
    return password


def with_credentials(url: str, user: str, password: str) -> str:
    """The same server and database as `url`, logging in as `user`."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


async def prepare_embedded_database(superuser_url: str, data_dir: Path) -> str:
    """Apply the schema as the embedded superuser and set up the service's login role;
    return the DATABASE_URL the workers use."""
    password = service_password(data_dir)
    connection = await connect(superuser_url)
    try:
        await apply_schema(connection)
        await ensure_login_role(connection, EMBEDDED_SERVICE_ROLE, password)
    finally:
        await connection.close()
    return with_credentials(superuser_url, EMBEDDED_SERVICE_ROLE, password)
