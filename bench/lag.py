"""Sequencer lag under load: how long a committed event waits before the sequencer puts it
in `ledger_log` (docs/benchmarks.md, "Sequencer lag").

`ledger_log` has no time column and `events.recorded_at` is read by the writer before its
transaction even starts (so it would bill the write's own latency to the sequencer). So a
side process watches both ends from outside, during the measured window only:

- commit: a connection polls, every `interval`, the committed events the sequencer has not
  numbered yet (sql.UNSEQUENCED_POSITIONS). An event first seen by poll i committed after
  poll i - 1 was sent; an event never seen (committed and numbered between two polls)
  committed after the poll before the last one sent before it was numbered. Either bound
  is also floored by `recorded_at`.
- numbered: another connection LISTENs on `ledger_sequenced`, which the sequencer NOTIFYs
  with the new last seq when its batch commits; the time it arrives is the end.

So each lag is an upper bound, too long by at most about one poll interval. Events that
were already committed when the window opened are left out (their commit is unknown).
The poll costs the database one small index scan per interval; that is part of the figure.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from asyncpg.pool import PoolConnectionProxy

from bench import sql
from ledger.db import Connection, connect

SEQUENCED_CHANNEL = "ledger_sequenced"  # schema.sql, ledger_sequence_batch
DEFAULT_INTERVAL = 0.005


@dataclass
class LagObservations:
    """What a probe saw, in wall-clock seconds (time.time(), the clock recorded_at uses)."""

    polls: list[float] = field(default_factory=list)
    """When each poll was sent, in order."""
    first_seen: dict[int, int] = field(default_factory=dict)
    """position -> index of the first poll that saw it committed and not yet numbered."""
    sequenced: list[tuple[float, int]] = field(default_factory=list)
    """(when the notification arrived, the last seq it announced), in order."""
    start_seq: int = 0


def sequencer_lags(
    observations: LagObservations, rows: Sequence[tuple[int, int, datetime]]
) -> list[float]:
    """Seconds each numbered event waited. `rows`: (seq, position, recorded_at) of the
    events numbered after `start_seq`. Pure: tests/test_bench_units.py."""
    polls = observations.polls
    announced_at = [moment for moment, _ in observations.sequenced]
    announced_seq = [seq for _, seq in observations.sequenced]
    lags: list[float] = []
    for seq, position, recorded_at in rows:
        if seq <= observations.start_seq:
            continue
        which = bisect.bisect_left(announced_seq, seq)
        if which == len(announced_seq):
            continue  # numbered after the window closed
        numbered = announced_at[which]
        seen = observations.first_seen.get(position)
        if seen is not None:
            if seen == 0:
                continue  # already committed when the window opened
            committed_after = polls[seen - 1]
        else:
            last_before = bisect.bisect_left(polls, numbered) - 1
            if last_before < 1:
                continue
            committed_after = polls[last_before - 1]
        start = max(committed_after, recorded_at.timestamp())
        lags.append(max(0.0, numbered - start))
    return lags


class SequencerLagProbe:
    """Watches the sequencer from two side connections while it runs (start .. stop)."""

    def __init__(self, url: str, interval: float = DEFAULT_INTERVAL) -> None:
        self.url = url
        self.interval = interval
        self.observations = LagObservations()
        self._listener: Connection | None = None
        self._poller: Connection | None = None
        self._polling: asyncio.Task[None] | None = None

    def _on_sequenced(
        self,
        _connection: Connection | PoolConnectionProxy,
        _pid: int,
        _channel: str,
        payload: object,
    ) -> None:
        self.observations.sequenced.append((time.time(), int(str(payload))))

    async def start(self) -> None:
        self._listener = await connect(self.url)
        self._poller = await connect(self.url)
        await self._listener.add_listener(SEQUENCED_CHANNEL, self._on_sequenced)
        self.observations.start_seq = await self._poller.fetchval(sql.LAST_SEQ)
        self._polling = asyncio.create_task(self._poll(self._poller))

    async def _poll(self, connection: Connection) -> None:
        observations = self.observations
        while True:
            sent = time.time()
            rows = await connection.fetch(sql.UNSEQUENCED_POSITIONS)
            index = len(observations.polls)
            observations.polls.append(sent)
            for row in rows:
                observations.first_seen.setdefault(row["position"], index)
            await asyncio.sleep(max(0.0, sent + self.interval - time.time()))

    async def stop(self) -> list[float]:
        """Stop watching; the lags (seconds) of the events numbered while it watched."""
        try:
            if self._polling is not None:
                self._polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._polling
            rows: list[tuple[int, int, datetime]] = []
            if self._listener is not None:
                await self._listener.remove_listener(SEQUENCED_CHANNEL, self._on_sequenced)
            sequenced = self.observations.sequenced
            if self._poller is not None and sequenced:
                records = await self._poller.fetch(
                    sql.SEQUENCED_RANGE, self.observations.start_seq, sequenced[-1][1]
                )
                rows = [(r["seq"], r["position"], r["recorded_at"]) for r in records]
            return sequencer_lags(self.observations, rows)
        finally:
            for connection in (self._listener, self._poller):
                if connection is not None:
                    await connection.close()
            self._listener = self._poller = None
