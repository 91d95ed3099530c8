"""Named SQL of API keys and of the service's database role. Values only ever as $n."""

from __future__ import annotations

# --- API keys (api/keystore.py) ---

INSERT_KEY = """
INSERT INTO api_keys (id, name, role, hash) VALUES ($1, $2, $3, $4)
RETURNING id, name, role, created_at, revoked_at
"""

SELECT_KEY_FOR_VERIFICATION = """
SELECT id, name, role, created_at, revoked_at, hash FROM api_keys WHERE id = $1
"""

SELECT_KEYS = """
SELECT id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at, id
"""

# Revoking twice keeps the first revocation time.
REVOKE_KEY = """
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
RETURNING id, name, role, created_at, revoked_at
"""

ANY_KEY_EXISTS = "SELECT EXISTS (SELECT 1 FROM api_keys)"

COUNT_ACTIVE_KEYS = "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"

# --- The database role (api/dbrole.py) ---

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
