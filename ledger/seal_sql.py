"""Every SQL statement of the seals (ledger/seals.py), by name. Values only as $n parameters."""

from __future__ import annotations

from ledger.sql import EVENT_COLUMNS

SEAL_COLUMNS = """
    tree_size, root_hash, previous_seal_hash, sealed_at, key_id, signature, seal_hash
"""

# Transaction-level: released at commit or rollback, so a crashed sealer never holds it.
LOCK_SEALING = "SELECT pg_advisory_xact_lock($1)"
TRY_LOCK_SEALING = "SELECT pg_try_advisory_xact_lock($1)"

SELECT_LATEST_SEAL = f"SELECT {SEAL_COLUMNS} FROM seals ORDER BY tree_size DESC LIMIT 1"

SELECT_SEAL = f"SELECT {SEAL_COLUMNS} FROM seals WHERE tree_size = $1"

SELECT_ALL_SEALS = f"SELECT {SEAL_COLUMNS} FROM seals ORDER BY tree_size"

SELECT_LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM ledger_log"

SELECT_NODES = """
SELECT n.height, n.node_index, n.hash
FROM merkle_nodes n
JOIN unnest($1::smallint[], $2::bigint[]) AS wanted(height, node_index)
  USING (height, node_index)
"""

INSERT_NODES = """
INSERT INTO merkle_nodes (height, node_index, hash)
SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])
"""

# The stored event hashes of the next leaves to seal, in seq order. A missing event row
# (possible only if someone bypassed the triggers) shows as a NULL hash. `linked`: the
# event's prev_hash is its stream predecessor's hash (32 zero bytes for version 1): one
# index probe per row, so a chain broken before sealing is refused, not signed.
SELECT_LEAVES_TO_SEAL = """
SELECT l.seq, l.position, e.hash,
       e.prev_hash = coalesce(p.hash, CASE WHEN e.stream_version = 1
                                           THEN decode(repeat('00', 32), 'hex') END)
           AS linked
FROM ledger_log l
LEFT JOIN events e ON e.position = l.position
LEFT JOIN events p ON p.stream_id = e.stream_id AND p.stream_version = e.stream_version - 1
WHERE l.seq > $1 AND l.seq <= $2
ORDER BY l.seq
LIMIT $3
"""

# --- What a sealer checks before it extends the latest seal (ledger/seals.py, `_check_base`)

# The whole log, by count and max: no hole in seq (count = max), no logged event whose row
# is gone, and the log ends where the sequencer's cursor says (its rows and the cursor
# commit together). Index-only scans of the two primary keys, a merge anti-join between
# them: O(n) in the database (about 1 ms per 1,000 log rows on the 2-core development
# machine), so the sequencer runs it at most once per `full_check_interval`, on-demand and
# background seals every time.
SELECT_LOG_SHAPE = """
SELECT count(*) AS entries,
       coalesce(max(l.seq), 0) AS last_seq,
       count(*) FILTER (WHERE NOT EXISTS (
           SELECT 1 FROM events e WHERE e.position = l.position)) AS missing_events,
       (SELECT last_seq FROM ledger_cursor) AS cursor_seq
FROM ledger_log l
"""

# The previous seal's own leaves (seq $1 < s <= $2, at most a batch): the stored leaf hash
# against SHA-256(0x00 || the event's stored hash), and the rows still there. Catches an
# event edited and re-hashed just after the seal that covers it, before it is built on.
SELECT_LEAVES_OF_LAST_SEAL = """
SELECT s.seq, l.position, e.hash, leaf.hash AS leaf
FROM generate_series($1::bigint + 1, $2::bigint) AS s(seq)
LEFT JOIN ledger_log l ON l.seq = s.seq
LEFT JOIN events e ON e.position = l.position
LEFT JOIN merkle_nodes leaf ON leaf.height = 0 AND leaf.node_index = s.seq - 1
WHERE leaf.hash IS NULL OR e.hash IS NULL
   OR leaf.hash <> sha256('\\x00'::bytea || e.hash)
ORDER BY s.seq
LIMIT 1
"""

SELECT_SEAL_BEFORE = """
SELECT coalesce(max(tree_size), 0) FROM seals WHERE tree_size < $1
"""

SELECT_SEALS_BETWEEN = f"""
SELECT {SEAL_COLUMNS} FROM seals WHERE tree_size > $1 AND tree_size <= $2
ORDER BY tree_size LIMIT $3
"""

INSERT_SEAL = """
INSERT INTO seals (tree_size, root_hash, previous_seal_hash, sealed_at, key_id, signature,
                   seal_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

SELECT_EVENT_AT_POSITION = f"""
SELECT {EVENT_COLUMNS}
FROM events e LEFT JOIN ledger_log l ON l.position = e.position
WHERE e.position = $1
"""

# Verification walks every seq up to the largest seal, whether or not its log row and event
# still exist, next to the leaf hash stored when it was sealed. Any of the three may be
# missing after tampering; the LEFT JOINs keep the seq so the gap can be named.
SELECT_SEALED_LEAVES = f"""
SELECT s.seq AS leaf_seq, l.position AS log_position, leaf.hash AS sealed_leaf,
       {EVENT_COLUMNS}
FROM generate_series(1::bigint, $1::bigint) AS s(seq)
LEFT JOIN ledger_log l ON l.seq = s.seq
LEFT JOIN events e ON e.position = l.position
LEFT JOIN merkle_nodes leaf ON leaf.height = 0 AND leaf.node_index = s.seq - 1
ORDER BY s.seq
"""
