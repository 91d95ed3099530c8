"""How far the ledger's background work is behind: one query, for readiness and metrics.

`read_log_status` answers, in one statement (so one round trip per scrape or probe):

- the log head (`ledger_cursor.last_seq`);
- committed events the sequencer has not numbered yet, and when the oldest of them was
  recorded. "Not yet numbered" is exactly what the sequencer's own cursor says: events
  after `(last_transaction_id, last_position)` in its reading order, found through the
  same `events_transaction_order` index it uses;
- whether any session of this database holds the sequencer's leadership lock;
- the newest seal (how many events it covers, when it was made);
- every projection checkpoint, and when the first event after it was recorded.

An event's `recorded_at` is the command's clock, not its commit time: imported history and
tests carry old times. `LagObserver` therefore also remembers when this process first saw
the current oldest unsequenced event, and the lag it reports is the smaller of the two ages,
so an old `recorded_at` alone never makes the sequencer look stuck.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ledger.db import Connection
from ledger.sequencer import LEADERSHIP_LOCK_KEY

# pg_locks shows a one-bigint advisory lock as classid = the high 32 bits, objid = the low
# 32 bits and objsubid = 1 (objsubid 2 is the two-integer form).
LEADERSHIP_CLASSID = LEADERSHIP_LOCK_KEY >> 32
LEADERSHIP_OBJID = LEADERSHIP_LOCK_KEY & 0xFFFFFFFF

# $1, $2: the leadership lock's classid and objid.
SELECT_LOG_STATUS = """
WITH cursor AS (
    SELECT last_transaction_id, last_position, last_seq FROM ledger_cursor
), pending AS (
    SELECT count(*) AS events,
           (array_agg(e.position ORDER BY e.transaction_id, e.position))[1] AS oldest_position,
           min(e.recorded_at) AS oldest_recorded_at
    FROM events e, cursor c
    WHERE (e.transaction_id, e.position) > (c.last_transaction_id, c.last_position)
), seal AS (
    SELECT tree_size, sealed_at FROM seals ORDER BY tree_size DESC LIMIT 1
), checkpoints AS (
    SELECT p.projection, p.last_seq,
           (SELECT e.recorded_at FROM ledger_log l JOIN events e ON e.position = l.position
            WHERE l.seq = p.last_seq + 1) AS next_recorded_at
    FROM projection_checkpoints p
)
SELECT c.last_seq AS log_head,
       p.events AS unsequenced,
       p.oldest_position,
       extract(epoch FROM now() - p.oldest_recorded_at)::float8
           AS oldest_unsequenced_recorded_seconds,
       EXISTS (
           SELECT 1 FROM pg_locks k
           WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 1
             AND k.classid = $1::bigint::oid AND k.objid = $2::bigint::oid
             AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       ) AS sequencer_leads,
       (SELECT tree_size FROM seal) AS sealed_seq,
       extract(epoch FROM now() - (SELECT sealed_at FROM seal))::float8 AS seal_age_seconds,
       coalesce((SELECT array_agg(projection ORDER BY projection) FROM checkpoints), '{}')
           AS projections,
       coalesce((SELECT array_agg(last_seq ORDER BY projection) FROM checkpoints), '{}')
           AS projection_seqs,
       coalesce((SELECT array_agg(
                    greatest(coalesce(extract(epoch FROM now() - next_recorded_at), 0), 0)::float8
                    ORDER BY projection) FROM checkpoints), '{}')
           AS projection_lag_seconds
FROM cursor c, pending p
"""


@dataclass(frozen=True, slots=True)
class CheckpointLag:
    projection: str
    last_seq: int
    events: int  # log head minus the checkpoint
    seconds: float  # since the first event after the checkpoint was recorded (0: none)


@dataclass(frozen=True, slots=True)
class LogStatus:
    log_head: int
    unsequenced: int
    oldest_unsequenced_position: int | None
    oldest_unsequenced_recorded_seconds: float | None
    sequencer_leads: bool
    sealed_seq: int  # 0: never sealed
    seal_age_seconds: float | None  # None: never sealed
    checkpoints: tuple[CheckpointLag, ...]

    @property
    def unsealed(self) -> int:
        return max(self.log_head - self.sealed_seq, 0)


async def read_log_status(connection: Connection) -> LogStatus:
    row = await connection.fetchrow(SELECT_LOG_STATUS, LEADERSHIP_CLASSID, LEADERSHIP_OBJID)
    assert row is not None
    head: int = row["log_head"]

    def age(seconds: float | None) -> float | None:  # clocks differ a little: never negative
        return None if seconds is None else max(seconds, 0.0)

    checkpoints = tuple(
        CheckpointLag(name, seq, max(head - seq, 0), seconds)
        for name, seq, seconds in zip(
            row["projections"], row["projection_seqs"], row["projection_lag_seconds"], strict=True
        )
    )
    return LogStatus(
        log_head=head,
        unsequenced=row["unsequenced"],
        oldest_unsequenced_position=row["oldest_position"],
        oldest_unsequenced_recorded_seconds=age(row["oldest_unsequenced_recorded_seconds"]),
        sequencer_leads=row["sequencer_leads"],
        sealed_seq=row["sealed_seq"] or 0,
        seal_age_seconds=age(row["seal_age_seconds"]),
        checkpoints=checkpoints,
    )


class LagObserver:
    """The sequencer lag in seconds: how long the oldest unsequenced event has waited.

    The smaller of its recorded age and how long this observer has seen that same event
    waiting (see the module's docstring); 0 when nothing waits.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._position: int | None = None
        self._since = 0.0

    def lag_seconds(self, status: LogStatus) -> float:
        position = status.oldest_unsequenced_position
        if position is None or status.unsequenced == 0:
            self._position = None
            return 0.0
        now = self._clock()
        if position != self._position:
            self._position, self._since = position, now
        observed = now - self._since
        recorded = status.oldest_unsequenced_recorded_seconds
        return observed if recorded is None else min(observed, recorded)


# --- Streaming replicas: how far a reader is, and read-your-writes ---

# After a commit, any session's current WAL insert position is at or past the commit record.
CURRENT_WAL_LSN = "SELECT pg_current_wal_lsn()::text"

# On a replica: whether it has replayed up to $1. On a primary (no replay position) always
# true: what a primary can see includes every commit before now.
REPLAYED_UP_TO = """
SELECT coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn()) >= $1::text::pg_lsn
"""

# A replica's lag: 0 when it has replayed everything it received, else the age of the last
# transaction it replayed. NULL on a primary.
REPLICA_LAG_SECONDS = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN NULL
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
    ELSE greatest(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8
END
"""


async def current_wal_lsn(connection: Connection) -> str:
    lsn: str = await connection.fetchval(CURRENT_WAL_LSN)
    return lsn


async def replayed_up_to(connection: Connection, lsn: str) -> bool:
    reached: bool = await connection.fetchval(REPLAYED_UP_TO, lsn)
    return reached


async def replica_lag_seconds(connection: Connection) -> float | None:
    lag: float | None = await connection.fetchval(REPLICA_LAG_SECONDS)
    return lag
