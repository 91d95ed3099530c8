"""SQL of `lending-ledger verify`, by name. Values only as $n parameters.

Every statement runs inside one REPEATABLE READ snapshot shared by all of verify's
connections (pg_export_snapshot), so concurrent appends never look like findings.
"""

from __future__ import annotations

from projections.sql import APPLICATION_COLUMNS, SELECT_ALL_HISTORY

EXPORT_SNAPSHOT = "SELECT pg_export_snapshot()"

# Every event, stream by stream, through a server-side cursor (the unique index on
# (stream_id, stream_version) gives this order without a sort), from stream id $1 (and
# below $2: a range, for a worker process). The recorded time is formatted by the server
# exactly as the hash covers it (UTC, microseconds, `Z`), which also keeps a tampered
# 'infinity' readable; data and metadata arrive as JSON text.
_EVENTS = """
SELECT e.stream_id, e.stream_version, e.position, e.event_id, e.event_type,
       e.schema_version, e.data::text AS data, e.metadata::text AS metadata,
       to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           AS recorded_at,
       e.prev_hash, e.hash
FROM events e
"""

EVENTS_IN_STREAM_ORDER_FROM = f"""{_EVENTS}
WHERE e.stream_id >= $1
ORDER BY e.stream_id, e.stream_version
"""

EVENTS_IN_STREAM_ORDER_BETWEEN = f"""{_EVENTS}
WHERE e.stream_id >= $1 AND e.stream_id < $2
ORDER BY e.stream_id, e.stream_version
"""

# How to split the streams among worker processes: quantiles of stream_id ($1: fractions)
# over a sample of the events ($2: percent of its pages), in the database's collation.
ESTIMATED_EVENTS = "SELECT reltuples::bigint FROM pg_class WHERE oid = 'public.events'::regclass"

STREAM_SPLITS = """
SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY stream_id)
FROM events TABLESAMPLE SYSTEM ($2::float8)
"""

# The read models in application id order (their primary keys), to merge with the fold.
APPLICATIONS_IN_ID_ORDER = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications ORDER BY application_id
"""

HISTORY_IN_ID_ORDER = f"{SELECT_ALL_HISTORY} ORDER BY application_id, stream_version"

# The same, for the applications whose stream id ($1 || id) is in a worker's range [$2, $3)
# ($3 NULL: no end), compared in the same collation as the events' range.
_IN_RANGE = """
WHERE ($1::text || application_id::text) >= $2::text
  AND ($3::text IS NULL OR ($1::text || application_id::text) < $3::text)
"""

APPLICATIONS_IN_RANGE = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications {_IN_RANGE} ORDER BY application_id
"""

HISTORY_IN_RANGE = f"{SELECT_ALL_HISTORY} {_IN_RANGE} ORDER BY application_id, stream_version"

# --- The ledger log ---

LOG_SUMMARY = """
SELECT (SELECT count(*) FROM ledger_log) AS entries,
       (SELECT coalesce(max(seq), 0) FROM ledger_log) AS max_seq,
       c.last_seq AS cursor_seq,
       (SELECT count(*) FROM events e
        WHERE (e.transaction_id, e.position) <= (c.last_transaction_id, c.last_position))
           AS events_below_cursor
FROM ledger_cursor c
"""

# Log entries that break the log's rules, in seq order: seq must run 1, 2, 3, ... (no hole),
# every logged position must be an event, and (transaction_id, position) must increase with
# seq, because that is the order the sequencer logs in. A swap of two entries breaks the last.
LOG_PROBLEMS = """
SELECT seq, position, stream_id, stream_version, missing, prev_seq, out_of_order
FROM (
    SELECT l.seq, l.position, e.stream_id, e.stream_version, e.position IS NULL AS missing,
           lag(l.seq) OVER w AS prev_seq,
           coalesce((e.transaction_id, e.position)
                    <= (lag(e.transaction_id) OVER w, lag(e.position) OVER w), false)
               AS out_of_order
    FROM ledger_log l LEFT JOIN events e ON e.position = l.position
    WINDOW w AS (ORDER BY l.seq)
) t
WHERE missing OR seq <> coalesce(prev_seq, 0) + 1 OR out_of_order
ORDER BY seq
LIMIT $1
"""

# Events the sequencer has passed (at or before its cursor) that have no log entry.
UNLOGGED_BELOW_CURSOR = """
SELECT e.position, e.stream_id, e.stream_version
FROM events e, ledger_cursor c
WHERE (e.transaction_id, e.position) <= (c.last_transaction_id, c.last_position)
  AND NOT EXISTS (SELECT 1 FROM ledger_log l WHERE l.position = e.position)
ORDER BY e.position
LIMIT $1
"""

# --- The immutability triggers ---

TRIGGERS = """
SELECT c.relname AS table_name, t.tgname AS name, t.tgenabled::text AS enabled,
       t.tgtype::integer AS type_bits, p.proname AS function, p.prosrc AS function_body
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE t.tgrelid IN (to_regclass('public.events'), to_regclass('public.ledger_log'))
  AND NOT t.tgisinternal
"""

# --- Seals (checked by ledger/seals.py; these only name what they found) ---

COUNT_SEALS = "SELECT count(*) FROM seals"

STREAM_OF_POSITION = "SELECT stream_id FROM events WHERE position = $1"
