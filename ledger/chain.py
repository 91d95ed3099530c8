"""The hash chain: an event's hash, and verifying a stream from its stored envelopes alone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.canonical import GENESIS_HASH, envelope_for_hashing, event_hash
from ledger.events import RecordedEvent


@dataclass(frozen=True, slots=True)
class ChainBreak:
    stream_id: str
    position: int
    stream_version: int
    reason: str


def hash_of_event(event: RecordedEvent) -> bytes:
    """SHA-256 of the event's canonical envelope (its own `hash` field is not covered)."""
    return event_hash(
        envelope_for_hashing(
            stream_id=event.stream_id,
            stream_version=event.stream_version,
            event_id=str(event.event_id),
            event_type=event.event_type,
            schema_version=event.schema_version,
            data=event.data,
            metadata=event.metadata,
            recorded_at=event.recorded_at,
            prev_hash=event.prev_hash,
        )
    )


def verify_stream(events: Iterable[RecordedEvent]) -> ChainBreak | None:
    """The first break in one stream's chain (events in stream-version order), or None."""
    expected_prev = GENESIS_HASH
    expected_version = 1
    for event in events:
        reason = None
        if event.stream_version != expected_version:
            reason = f"expected stream version {expected_version}, found {event.stream_version}"
        elif event.prev_hash != expected_prev:
            reason = "prev_hash does not match the previous event's hash"
        elif hash_of_event(event) != event.hash:
            reason = "hash does not match the event's contents"
        if reason is not None:
            return ChainBreak(event.stream_id, event.position, event.stream_version, reason)
        expected_prev = event.hash
        expected_version += 1
    return None
