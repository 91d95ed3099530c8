"""Every SQL statement of the write side, by name. Values only ever as $n parameters."""

from __future__ import annotations

EVENT_COLUMNS = """
    e.position, l.seq, e.stream_id, e.stream_version, e.event_id, e.event_type,
    e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
"""

# Rows are inserted in stream-version order so positions increase along the stream.
INSERT_EVENTS = """
INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                    data, metadata, recorded_at, prev_hash, hash)
SELECT $1, u.stream_version, u.event_id, u.event_type, u.schema_version,
       u.data, u.metadata, $2, u.prev_hash, u.hash
FROM unnest($3::integer[], $4::uuid[], $5::text[], $6::integer[], $7::jsonb[], $8::jsonb[],
            $9::bytea[], $10::bytea[])
     AS u(stream_version, event_id, event_type, schema_version, data, metadata, prev_hash, hash)
ORDER BY u.stream_version
RETURNING position, stream_version
"""

SELECT_STREAM_HEAD = """
SELECT stream_version, hash FROM events
WHERE stream_id = $1
ORDER BY stream_version DESC
LIMIT 1
"""

SELECT_STREAM = f"""
SELECT {EVENT_COLUMNS}
FROM events e LEFT JOIN ledger_log l ON l.position = e.position
WHERE e.stream_id = $1 AND e.position <= $2
ORDER BY e.stream_version
"""

SELECT_FEED = f"""
SELECT {EVENT_COLUMNS}
FROM ledger_log l JOIN events e ON e.position = l.position
WHERE l.seq > $1
ORDER BY l.seq
LIMIT $2
"""

# --- The sequencer (see schema.sql, "The ledger log", for why it reads in this order) ---

LOCK_CURSOR = """
SELECT last_transaction_id, last_position, last_seq FROM ledger_cursor FOR UPDATE
"""

# Runs after LOCK_CURSOR, in the same transaction but as a new statement: in READ COMMITTED
# it takes a fresh snapshot, and pg_current_snapshot() is that snapshot, so every event with
# transaction_id below its xmin is already visible here or never will be.
SEQUENCE_BATCH = """
WITH batch AS (
    SELECT e.position, e.transaction_id,
           row_number() OVER (ORDER BY e.transaction_id, e.position) AS n
    FROM events e
    WHERE (e.transaction_id, e.position) > ($1::xid8, $2::bigint)
      AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.transaction_id, e.position
    LIMIT $4
), logged AS (
    INSERT INTO ledger_log (seq, position)
    SELECT $3 + n, position FROM batch
    RETURNING seq
), last AS (
    SELECT transaction_id, position, n FROM batch ORDER BY n DESC LIMIT 1
), moved AS (
    UPDATE ledger_cursor
    SET last_transaction_id = last.transaction_id,
        last_position = last.position,
        last_seq = $3 + last.n
    FROM last
    RETURNING last_seq
)
SELECT (SELECT count(*) FROM logged) AS added, (SELECT last_seq FROM moved) AS last_seq
"""

NOTIFY_SEQUENCED = "SELECT pg_notify('ledger_sequenced', $1::text)"

TRY_LEADERSHIP = "SELECT pg_try_advisory_lock($1)"

SEQUENCER_STATUS = "SELECT last_seq FROM ledger_cursor"

# --- Idempotency ---

# ON CONFLICT DO NOTHING waits while another transaction holds the same key uncommitted,
# then does nothing if that transaction committed: a concurrent retry replays the first
# response instead of appending twice.
CLAIM_IDEMPOTENCY_KEY = """
INSERT INTO idempotency_keys (idempotency_key, request_fingerprint) VALUES ($1, $2)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING idempotency_key
"""

SELECT_IDEMPOTENT_RESPONSE = """
SELECT request_fingerprint, status_code, response_body FROM idempotency_keys
WHERE idempotency_key = $1
"""

SAVE_IDEMPOTENT_RESPONSE = """
UPDATE idempotency_keys SET status_code = $2, response_body = $3 WHERE idempotency_key = $1
"""
