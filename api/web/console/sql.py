"""Named SQL of the console's own queries; values only ever as $n parameters."""

from __future__ import annotations

from projections.sql import APPLICATION_COLUMNS

# The review inbox: the pending queue (as GET /lending/reviews) with optional filters; a
# NULL parameter means "no filter". Keyset paging on (in_review_since, application_id).
SELECT_INBOX = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications
WHERE status = 'in_review' AND (in_review_since, application_id) > ($1, $2)
  AND ($3::text IS NULL OR applicant_id = $3)
  AND ($4::numeric IS NULL OR amount >= $4)
  AND ($5::numeric IS NULL OR amount <= $5)
  AND ($6::numeric IS NULL OR risk_score >= $6)
  AND ($7::numeric IS NULL OR risk_score <= $7)
  AND ($8::text IS NULL OR coalesce(recommended_outcome, 'none') = $8)
ORDER BY in_review_since, application_id
LIMIT $9
"""

COUNT_PENDING = "SELECT count(*) FROM loan_applications WHERE status = 'in_review'"

# The ledger browser: the log in seq order (every event once, as GET /events), filtered.
SELECT_LEDGER = """
SELECT l.seq, e.position, e.stream_id, e.stream_version, e.event_id, e.event_type,
       e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
FROM ledger_log l JOIN events e ON e.position = l.position
WHERE l.seq > $1
  AND ($2::text IS NULL OR e.event_type = $2)
  AND ($3::text IS NULL OR e.stream_id = $3)
  AND ($4::text IS NULL OR e.stream_id IN (
        SELECT 'loan-application-' || application_id FROM loan_applications
        WHERE applicant_id = $4))
  AND ($5::timestamptz IS NULL OR e.recorded_at >= $5)
  AND ($6::timestamptz IS NULL OR e.recorded_at < $6)
ORDER BY l.seq
LIMIT $7
"""

SELECT_EVENT_TYPES = "SELECT DISTINCT event_type FROM events ORDER BY event_type"

SELECT_EVENT = """
SELECT l.seq, e.position, e.stream_id, e.stream_version, e.event_id, e.event_type,
       e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
FROM events e LEFT JOIN ledger_log l ON l.position = e.position
WHERE e.position = $1
"""

# Operations: events committed but not yet in the ledger log (after the sequencer's cursor,
# in its (transaction_id, position) order; the index events_transaction_order serves it).
COUNT_UNSEQUENCED = """
SELECT count(*) FROM events e, ledger_cursor c
WHERE (e.transaction_id, e.position) > (c.last_transaction_id, c.last_position)
"""

SELECT_SEALS = """
SELECT tree_size, sealed_at FROM seals ORDER BY tree_size DESC LIMIT $1
"""
