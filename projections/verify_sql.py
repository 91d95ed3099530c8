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
       e.prev_hash, e.hash, e.hashed
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

# --- Set-based: each event against its stored canonical bytes (events.hashed) ---
#
# For part $1 of $2 (a hash of the stream id, one part per connection), in one pass over
# the events and one sort of narrow rows: every event whose stored bytes hash to its hash,
# say exactly what its columns say (as JSON values: the bytes parsed, compared with the
# envelope built from the columns), follow the previous event's hash, at the next version.
# Returns the counts and the streams with any event that does not (or that has no stored
# bytes: written before the column existed): those are judged again in Python, event by
# event, to name the first bad one exactly as the streaming check does. The parse is only
# attempted on bytes whose hash matches (CASE keeps the order), so a forged row cannot
# make the statement fail on its own; bytes that hash right but are not UTF-8 JSON would,
# and then the caller checks the part in Python instead.
CHAIN_SUSPECTS = """
SELECT count(*) AS events,
       count(*) FILTER (WHERE t.first) AS streams,
       coalesce(array_agg(DISTINCT t.stream_id) FILTER (WHERE NOT t.ok), '{}') AS suspects
FROM (
    SELECT r.stream_id,
           lag(r.stream_version) OVER w IS NULL AS first,
           r.ok AND r.stream_version = row_number() OVER w
                AND r.prev_hash = coalesce(lag(r.hash) OVER w, decode(repeat('00', 32), 'hex'))
               AS ok
    FROM (
        SELECT e.stream_id COLLATE "C" AS stream_id, e.stream_version, e.prev_hash, e.hash,
               CASE WHEN e.hashed IS NULL OR sha256(e.hashed) <> e.hash THEN false
                    ELSE convert_from(e.hashed, 'UTF8')::jsonb = jsonb_build_object(
                        'stream_id', e.stream_id,
                        'stream_version', e.stream_version,
                        'event_id', e.event_id::text,
                        'event_type', e.event_type,
                        'schema_version', e.schema_version,
                        'data', e.data,
                        'metadata', e.metadata,
                        'recorded_at', to_char(e.recorded_at AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                        'prev_hash', encode(e.prev_hash, 'hex'))
               END AS ok
        FROM events e
        WHERE $2::integer <= 1 OR abs(hashtext(e.stream_id) % $2::integer) = $1::integer
        OFFSET 0
    ) r
    WINDOW w AS (PARTITION BY r.stream_id ORDER BY r.stream_version)
) t
"""

# How many events lack stored bytes (written before events.hashed existed): many, and the
# streaming check in Python is the better way for the whole ledger.
COUNT_UNHASHED = "SELECT count(*) FROM events WHERE hashed IS NULL"

# The events of some streams ($1), as the streaming check reads them.
EVENTS_OF_STREAMS = f"""{_EVENTS}
WHERE e.stream_id = ANY ($1::text[])
ORDER BY e.stream_id, e.stream_version
"""

# Read-model rows counted per part ($2 parts, part $3; $1 the stream prefix), as the
# set-based comparison (projections/sql.py, FOLD_DIFFERENCES) splits them.
COUNT_READ_MODEL_ROWS = """
SELECT (SELECT count(*) FROM loan_applications a
        WHERE $2::integer <= 1
           OR abs(hashtext($1::text || a.application_id::text) % $2::integer) = $3::integer)
           AS applications,
       (SELECT count(*) FROM application_history a
        WHERE $2::integer <= 1
           OR abs(hashtext($1::text || a.application_id::text) % $2::integer) = $3::integer)
           AS history_rows
"""

APPLICATIONS_BY_ID = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications WHERE application_id = ANY ($1::uuid[])
"""

HISTORY_BY_ID = f"{SELECT_ALL_HISTORY} WHERE application_id = ANY ($1::uuid[])"

# Every stream of a part ($1 of $2), when the set-based check cannot judge it.
STREAMS_OF_PART = """
SELECT coalesce(array_agg(DISTINCT e.stream_id), '{}') AS streams, count(*) AS events
FROM events e
WHERE $2::integer <= 1 OR abs(hashtext(e.stream_id) % $2::integer) = $1::integer
"""
