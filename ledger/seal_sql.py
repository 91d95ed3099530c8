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
# (possible only if someone bypassed the triggers) shows as a NULL hash.
SELECT_LEAVES_TO_SEAL = """
SELECT l.seq, l.position, e.hash
FROM ledger_log l LEFT JOIN events e ON e.position = l.position
WHERE l.seq > $1 AND l.seq <= $2
ORDER BY l.seq
LIMIT $3
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
