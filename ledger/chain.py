"""The hash chain: an event's hash, and verifying a stream from its stored envelopes alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from ledger.canonical import GENESIS_HASH, canonical_bytes, envelope_for_hashing
from ledger.events import DomainEvent, NewEvent, RecordedEvent


@dataclass(frozen=True, slots=True)
class ChainBreak:
    stream_id: str
    position: int
    stream_version: int
    reason: str


def hash_of_event(event: RecordedEvent) -> bytes:
    """SHA-256 of the event's canonical envelope (its own `hash` field is not covered)."""
    return hash_and_bytes(
        event.stream_id,
        event.stream_version,
        event.event_id,
        event.event_type,
        event.schema_version,
        event.data,
        event.metadata,
        event.recorded_at,
        event.prev_hash,
    )[0]


@dataclass(frozen=True, slots=True)
class ChainedEvent:
    """A chained envelope and the canonical JSON of its data and metadata, encoded once:
    the same bytes enter the hash and travel to the database."""

    event: RecordedEvent
    data_json: bytes
    metadata_json: bytes
    hashed: bytes  # the whole envelope's canonical bytes: what `hash` covers (events.hashed)
    domain_event: DomainEvent  # what `event.decode()` gives back, without decoding


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
    The store's append, the command path and the bulk import all chain events here, so
    they hash alike.
    """
    chained = chain_new_events_encoded(
        stream_id, expected_version, prev_hash, new_events, recorded_at
    )
    return [c.event for c in chained]


def chain_new_events_encoded(
    stream_id: str,
    expected_version: int,
    prev_hash: bytes,
    new_events: Sequence[NewEvent],
    recorded_at: datetime,
) -> list[ChainedEvent]:
    """`chain_new_events`, keeping each event's canonical data and metadata JSON.

    The data and metadata are encoded canonically once and embedded in the envelope as
    `orjson.Fragment`s: a fragment is written verbatim, so the envelope's bytes are exactly
    `canonical_bytes` of the whole envelope (tests/unit/test_properties_pure.py holds it).
    """
    events: list[ChainedEvent] = []
    for version, new in enumerate(new_events, start=expected_version + 1):
        event_type, schema_version = new.event.event_type, new.event.schema_version
        data, metadata = new.event.to_data(), new.metadata.to_data()
        data_json, metadata_json = canonical_bytes(data), canonical_bytes(metadata)
        hashed = canonical_bytes(
            envelope_for_hashing(
                stream_id=stream_id,
                stream_version=version,
                event_id=str(new.event_id),
                event_type=event_type,
                schema_version=schema_version,
                data=orjson.Fragment(data_json),  # type: ignore[arg-type]
                metadata=orjson.Fragment(metadata_json),  # type: ignore[arg-type]
                recorded_at=recorded_at,
                prev_hash=prev_hash,
            )
        )
        digest = hashlib.sha256(hashed).digest()
        recorded = RecordedEvent(
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
        events.append(ChainedEvent(recorded, data_json, metadata_json, hashed, new.event))
        prev_hash = digest
    return events


def chain_new_events_hashed(
    stream_id: str,
    expected_version: int,
    prev_hash: bytes,
    new_events: Sequence[NewEvent],
    recorded_at: datetime,
) -> tuple[list[RecordedEvent], list[bytes]]:
    """`chain_new_events`, with the canonical bytes each hash covers (for `events.hashed`)."""
    chained = chain_new_events_encoded(
        stream_id, expected_version, prev_hash, new_events, recorded_at
    )
    return [c.event for c in chained], [c.hashed for c in chained]


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
