"""SQL of the projection rebuild and catch-up commands, by name. Values only as $n.

Statements that run while a shadow schema is on `search_path` name every public table
explicitly, so they never resolve to a shadow table by accident.
"""

from __future__ import annotations

# --- The shape of a table, to copy it exactly and to check the copy before a swap ---
# Each takes $1 = schema, $2 = table.

_TABLE = "to_regclass(format('%I.%I', $1::text, $2::text))"

SELECT_INDEXES = f"""
SELECT c.relname AS name, i.indisunique AS is_unique, i.indisprimary AS is_primary,
       substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*$') AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = {_TABLE}
ORDER BY c.relname
"""

SELECT_COLUMNS = f"""
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default_value,
       a.attidentity::text AS identity, a.attgenerated::text AS generated,
       a.attcollation::regcollation::text AS collation
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = {_TABLE} AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

SELECT_CONSTRAINTS = f"""
SELECT conname AS name, contype::text AS kind, pg_get_constraintdef(oid) AS definition
FROM pg_constraint
WHERE conrelid = {_TABLE}
ORDER BY conname
"""

SELECT_TABLE_PROPERTIES = f"""
SELECT pg_get_userbyid(c.relowner) AS owner, coalesce(c.reloptions, '{{}}') AS options,
       c.relrowsecurity AS row_security, c.relforcerowsecurity AS force_row_security,
       c.relreplident::text AS replica_identity,
       (SELECT coalesce(array_agg(t.tgname ORDER BY t.tgname), '{{}}')
        FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) AS triggers,
       (SELECT coalesce(array_agg(p.polname ORDER BY p.polname), '{{}}')
        FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
FROM pg_class c
WHERE c.oid = {_TABLE}
"""

# Privileges granted on a table to others than its owner (the owner's own are implicit).
SELECT_GRANTS = f"""
SELECT a.privilege_type, a.is_grantable,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
           AS grantee
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = {_TABLE} AND a.grantee <> c.relowner
ORDER BY 3, 1
"""

# The same for privileges granted on single columns (GRANT UPDATE (col) ON ...).
SELECT_COLUMN_GRANTS = f"""
SELECT a.privilege_type, a.is_grantable, quote_ident(att.attname) AS column_name,
       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
           AS grantee
FROM pg_attribute att
JOIN pg_class c ON c.oid = att.attrelid
CROSS JOIN LATERAL aclexplode(att.attacl) a
WHERE att.attrelid = {_TABLE} AND att.attnum > 0 AND NOT att.attisdropped
  AND a.grantee <> c.relowner
ORDER BY 4, 3, 1
"""

SELECT_CURRENT_USER = "SELECT current_user"

# The indexes of a shadow table, with the constraint each one backs (primary key, unique),
# to drop them before the bulk load and create them again, with the same names, after it.
SELECT_INDEX_DEFINITIONS = f"""
SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
       con.conname AS constraint_name, pg_get_constraintdef(con.oid) AS constraint_definition
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
WHERE i.indrelid = {_TABLE}
ORDER BY c.relname
"""

# --- Who is rebuilding: a session-level advisory lock per projection, across processes ---

TRY_LOCK_PROJECTION = "SELECT pg_try_advisory_lock($1::integer, $2::integer)"

UNLOCK_PROJECTION = "SELECT pg_advisory_unlock($1::integer, $2::integer)"

# The two-key form records the keys as unsigned classid / objid with objsubid 2.
PROJECTION_LOCK_HELD = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = ($1::integer::bigint & 4294967295)::oid
      AND objid = ($2::integer::bigint & 4294967295)::oid
)
"""

# --- Building and swapping ---

SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"

SELECT_LOG_HEAD = "SELECT last_seq FROM public.ledger_cursor"

# The events a shadow still lacks at the swap, read in ONE statement, so in one snapshot:
#   part 0: the ledger log after the shadow's checkpoint, in seq order;
#   part 1 (inline projections only, $2): committed events the sequencer has not reached yet,
#           in (transaction_id, position) order, which is stream order within each stream.
# In one snapshot the sequencer's cursor and the log agree (it writes both in one
# transaction): every committed event is either logged (at or before the cursor) or after
# the cursor, never both and never neither. The row comparison against scalar sub-selects
# (not a join) lets the planner use the events_transaction_order index. The tail is short,
# but the planner guesses a third of the table for that comparison; the LATERAL lookup
# (OFFSET 0 keeps it from being flattened into a join) fetches each tail event by its
# primary key, never scanning the whole event table while the swap holds its locks.
SELECT_SWAP_TAIL = """
WITH tail AS (
    SELECT 0 AS part, l.seq, NULL::xid8 AS transaction_id, l.position
    FROM public.ledger_log l
    WHERE l.seq > $1
    UNION ALL
    SELECT 1, NULL::bigint, u.transaction_id, u.position
    FROM public.events u
    WHERE $2::boolean
      AND (u.transaction_id, u.position) > (
          (SELECT c.last_transaction_id FROM public.ledger_cursor c),
          (SELECT c.last_position FROM public.ledger_cursor c))
)
SELECT e.position, t.seq, e.stream_id, e.stream_version, e.event_id, e.event_type,
       e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
FROM tail t
CROSS JOIN LATERAL (
    SELECT * FROM public.events x WHERE x.position = t.position OFFSET 0
) e
ORDER BY t.part, t.seq, t.transaction_id, t.position
"""

SAVE_LIVE_CHECKPOINT = """
INSERT INTO public.projection_checkpoints (projection, last_seq, updated_at)
VALUES ($1, $2, now())
ON CONFLICT (projection) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()
"""

SELECT_LIVE_CHECKPOINT = "SELECT last_seq FROM public.projection_checkpoints WHERE projection = $1"

# --- The last rebuild of each projection ---

START_REBUILD = """
INSERT INTO public.projection_rebuilds (projection, status, started_at)
VALUES ($1, 'running', now())
ON CONFLICT (projection) DO UPDATE SET
    status = 'running', started_at = now(), finished_at = NULL, events = 0,
    through_seq = NULL, row_counts = '{}', error = NULL
"""

FINISH_REBUILD = """
UPDATE public.projection_rebuilds
SET status = $2, finished_at = clock_timestamp(), events = $3, through_seq = $4, error = $5
WHERE projection = $1
"""

RECORD_REBUILD_ROWS = "UPDATE public.projection_rebuilds SET row_counts = $2 WHERE projection = $1"

SELECT_REBUILD = """
SELECT status, started_at, finished_at, events, through_seq, row_counts, error
FROM public.projection_rebuilds
WHERE projection = $1
"""

# What a rebuild needs: to own the live tables (to move them), CREATE on the database (for
# the shadow schema) and CREATE on public (to move the shadow tables in).
REBUILD_PRIVILEGES = """
SELECT coalesce(bool_and(pg_has_role(current_user, c.relowner, 'USAGE')), false)
           AS owns_tables,
       has_database_privilege(current_database(), 'CREATE') AS may_create_schemas,
       has_schema_privilege('public', 'CREATE') AS may_create_in_public,
       current_user AS role
FROM unnest($1::text[]) AS t(name)
LEFT JOIN pg_class c ON c.oid = to_regclass(format('public.%I', t.name))
"""
