"""Every SQL statement of the write side, by name. Values only ever as $n parameters."""

from __future__ import annotations

EVENT_COLUMNS = """
    e.position, l.seq, e.stream_id, e.stream_version, e.event_id, e.event_type,
    e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
"""

# Rows are inserted in stream-version order so positions increase along the stream.
# `hashed`: the canonical bytes the hash covers (ledger.chain.hash_and_bytes).
INSERT_EVENTS = """
INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                    data, metadata, recorded_at, prev_hash, hash, hashed)
SELECT $1, u.stream_version, u.event_id, u.event_type, u.schema_version,
       u.data, u.metadata, $2, u.prev_hash, u.hash, u.hashed
FROM unnest($3::integer[], $4::uuid[], $5::text[], $6::integer[], $7::jsonb[], $8::jsonb[],
            $9::bytea[], $10::bytea[], $11::bytea[])
     AS u(stream_version, event_id, event_type, schema_version, data, metadata, prev_hash, hash,
          hashed)
ORDER BY u.stream_version
RETURNING position, stream_version
"""

# Bulk import (api/service/importer.py): the events of many new streams in one statement, in
# the order given (so positions increase along each stream). Rows map back by event_id.
INSERT_EVENTS_OF_STREAMS = """
INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                    data, metadata, recorded_at, prev_hash, hash)
SELECT u.stream_id, u.stream_version, u.event_id, u.event_type, u.schema_version,
       u.data, u.metadata, u.recorded_at, u.prev_hash, u.hash
FROM unnest($1::text[], $2::integer[], $3::uuid[], $4::text[], $5::integer[], $6::jsonb[],
            $7::jsonb[], $8::timestamptz[], $9::bytea[], $10::bytea[]) WITH ORDINALITY
     AS u(stream_id, stream_version, event_id, event_type, schema_version, data, metadata,
          recorded_at, prev_hash, hash, n)
ORDER BY u.n
RETURNING position, event_id
"""

# Bulk import by COPY (api/service/importer.py): the columns, in the order of its records.
COPY_EVENT_COLUMNS = (
    "stream_id",
    "stream_version",
    "event_id",
    "event_type",
    "schema_version",
    "data",
    "metadata",
    "recorded_at",
    "prev_hash",
    "hash",
    "hashed",
)

# Which of these streams have begun (their version 1 exists): one unique-index probe each.
SELECT_EXISTING_STREAMS = """
SELECT stream_id FROM events WHERE stream_id = ANY($1::text[]) AND stream_version = 1
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

# Time travel: the streams as they stood at a recorded time ($2), each the prefix of events
# before the first one recorded later. A prefix, not a filter: recorded_at is when the
# command was handled, and a later version can carry an earlier time than the one before it
# (its request started first but appended second); that later version did not exist yet.
SELECT_STREAMS_AS_OF = f"""
SELECT {EVENT_COLUMNS}
FROM events e LEFT JOIN ledger_log l ON l.position = e.position
WHERE e.stream_id = ANY($1::text[]) AND e.position <= $3
  AND NOT EXISTS (
      SELECT 1 FROM events f
      WHERE f.stream_id = e.stream_id AND f.stream_version <= e.stream_version
        AND f.recorded_at > $2
  )
ORDER BY e.stream_id, e.stream_version
"""

SELECT_FEED = f"""
SELECT {EVENT_COLUMNS}
FROM ledger_log l JOIN events e ON e.position = l.position
WHERE l.seq > $1
ORDER BY l.seq
LIMIT $2
"""

# Score reconstruction (`rescore --all`): read through a server-side cursor, stream by stream,
# so one stream's scores and decisions are in memory at a time. $1: the event types.
SELECT_SCORE_EVENTS = f"""
SELECT {EVENT_COLUMNS}
FROM events e LEFT JOIN ledger_log l ON l.position = e.position
WHERE e.event_type = ANY($1::text[])
ORDER BY e.stream_id, e.stream_version
"""

# The totals the CLI's progress bars count towards (`rescore --all`, `verify`): only
# counted when a bar is shown. $1: the event types.
COUNT_SCORE_EVENTS = "SELECT count(*) FROM events WHERE event_type = ANY($1::text[])"

COUNT_EVENTS = "SELECT count(*) FROM events"

# --- The sequencer (see schema.sql, "The ledger log", for why it reads in this order) ---

# One batch in one round trip: schema.sql's ledger_sequence_batch locks the cursor, logs the
# next committed events below the horizon, moves the cursor and notifies, in the statement's
# own transaction (why the horizon is safe inside the function is written beside it).
SEQUENCE_BATCH = "SELECT added, last_seq FROM ledger_sequence_batch($1)"

TRY_LEADERSHIP = "SELECT pg_try_advisory_lock($1)"

SEQUENCER_STATUS = "SELECT last_seq FROM ledger_cursor"

# --- Idempotency (the protocol, and why it never waits, is in ledger/idempotency.py) ---

# Transaction-scoped: released at commit or rollback, so a crashed request frees its key.
TRY_IDEMPOTENCY_LOCK = "SELECT pg_try_advisory_xact_lock($1)"

# A live record is younger than the retention ($3). A committed record always has its
# response: the claim and the response are written in the same transaction.
SELECT_LIVE_IDEMPOTENT_RESPONSE = """
SELECT request_fingerprint, status_code, response_body FROM idempotency_keys
WHERE scope = $1 AND idempotency_key = $2 AND created_at > now() - $3::interval
"""

# Claims the key: a new row, or an expired record of the same key taken over as if unused.
# Returns no row when a live record exists.
CLAIM_IDEMPOTENCY_KEY = """
INSERT INTO idempotency_keys AS k (scope, idempotency_key, request_fingerprint)
VALUES ($1, $2, $3)
ON CONFLICT (scope, idempotency_key) DO UPDATE
SET request_fingerprint = EXCLUDED.request_fingerprint,
    status_code = NULL,
    response_body = NULL,
    created_at = now()
WHERE k.created_at <= now() - $4::interval
RETURNING k.idempotency_key
"""

SAVE_IDEMPOTENT_RESPONSE = """
UPDATE idempotency_keys SET status_code = $3, response_body = $4
WHERE scope = $1 AND idempotency_key = $2
"""

# One bounded batch, oldest first. SKIP LOCKED: the purge never waits for a request that is
# taking over an expired key (it deletes that row on a later round, if still expired).
PURGE_EXPIRED_IDEMPOTENCY_KEYS = """
WITH expired AS (
    SELECT scope, idempotency_key FROM idempotency_keys
    WHERE created_at <= now() - $1::interval
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM idempotency_keys k USING expired e
    WHERE k.scope = e.scope AND k.idempotency_key = e.idempotency_key
    RETURNING 1
)
SELECT count(*) FROM deleted
"""

# --- Schema state (ledger/schema.py) ---

RECORD_SCHEMA_DIGEST = """
INSERT INTO schema_applied (singleton, sha256, applied_at) VALUES (true, $1, now())
ON CONFLICT (singleton) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = EXCLUDED.applied_at
"""
