"""The hash chain: an event's hash, and verifying a stream from its stored envelopes alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.canonical import GENESIS_HASH, canonical_bytes, envelope_for_hashing, event_hash
from ledger.events import NewEvent, RecordedEvent


@dataclass(frozen=True, slots=True)
class ChainBreak:
    stream_id: str
    position: int
    stream_version: int
    reason: str


def hash_of_event(event: RecordedEvent) -> bytes:
    """SHA-256 of the event's canonical envelope (its own `hash` field is not covered)."""
    return _hash_of_envelope(
        event.stream_id,
        event.stream_version,
        event.event_id,
        event.event_type,
        event.schema_version,
        event.data,
        event.metadata,
        event.recorded_at,
        event.prev_hash,
    )


def _hash_of_envelope(
    stream_id: str,
    stream_version: int,
    event_id: UUID,
    event_type: str,
    schema_version: int,
    data: Mapping[str, Any],
    metadata: Mapping[str, Any],
    recorded_at: datetime,
    prev_hash: bytes,
) -> bytes:
    return event_hash(
        envelope_for_hashing(
            stream_id=stream_id,
            stream_version=stream_version,
            event_id=str(event_id),
            event_type=event_type,
            schema_version=schema_version,
            data=data,
            metadata=metadata,
            recorded_at=recorded_at,
            prev_hash=prev_hash,
        )
    )


def hash_and_bytes(
    stream_id: str,
    stream_version: int,
    event_id: UUID,
    event_type: str,
    schema_version: int,
    data: Mapping[str, Any],
    metadata: Mapping[str, Any],
    recorded_at: datetime,
    prev_hash: bytes,
) -> tuple[bytes, bytes]:
    """(SHA-256, canonical bytes) of an envelope: the hash, and exactly the bytes it covers
    (stored beside the event as `events.hashed`, so verify hashes them without encoding)."""
    encoded = canonical_bytes(
        envelope_for_hashing(
            stream_id=stream_id,
            stream_version=stream_version,
            event_id=str(event_id),
            event_type=event_type,
            schema_version=schema_version,
            data=data,
            metadata=metadata,
            recorded_at=recorded_at,
            prev_hash=prev_hash,
        )
    )
    return hashlib.sha256(encoded).digest(), encoded


def chain_new_events(
    stream_id: str,
    expected_version: int,
    prev_hash: bytes,
    new_events: Sequence[NewEvent],
    recorded_at: datetime,
) -> list[RecordedEvent]:
    """The envelopes of `new_events` appended to a stream at `expected_version` whose last
    hash is `prev_hash` (GENESIS_HASH for a new stream), each hashed over the one before.

    `position` is 0 and `seq` None: the database assigns them after the hash is computed.
    The store's append and the bulk import both chain events here, so they hash alike.
    """
    return chain_new_events_hashed(stream_id, expected_version, prev_hash, new_events, recorded_at)[
        0
    ]


def chain_new_events_hashed(
    stream_id: str,
    expected_version: int,
    prev_hash: bytes,
    new_events: Sequence[NewEvent],
    recorded_at: datetime,
) -> tuple[list[RecordedEvent], list[bytes]]:
    """`chain_new_events`, with the canonical bytes each hash covers (for `events.hashed`)."""
    events: list[RecordedEvent] = []
    encoded: list[bytes] = []
    for version, new in enumerate(new_events, start=expected_version + 1):
        event_type, schema_version = new.event.event_type, new.event.schema_version
        data, metadata = new.event.to_data(), new.metadata.to_data()
        digest, hashed = hash_and_bytes(
            stream_id,
            version,
            new.event_id,
            event_type,
            schema_version,
            data,
            metadata,
            recorded_at,
            prev_hash,
        )
        encoded.append(hashed)
        events.append(
            RecordedEvent(
                position=0,
                seq=None,
                stream_id=stream_id,
                stream_version=version,
                event_id=new.event_id,
                event_type=event_type,
                schema_version=schema_version,
                data=data,
                metadata=metadata,
                recorded_at=recorded_at,
                prev_hash=prev_hash,
                hash=digest,
            )
        )
        prev_hash = digest
    return events, encoded


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
