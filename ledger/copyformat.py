"""PostgreSQL's binary COPY format for rows of the event table, written without a
connection (a bulk import's worker processes encode; its writer only sends the bytes).

One row is what `COPY events (ledger.sql.COPY_EVENT_COLUMNS) FROM STDIN (FORMAT binary)`
reads: a field count, then each field as its length and its bytes in the type's binary
("send") form: text as UTF-8, int4 big-endian, uuid as its 16 bytes, jsonb as version 1
followed by the JSON text, timestamptz as microseconds since 2000-01-01 UTC, bytea as is.
These are the bytes asyncpg's own encoders produce for the same values (a test holds the
two imports equal, row for row); producing them where the events are made saves pickling
the records to the writer and encoding them there, field by field.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from uuid import UUID

from ledger.sql import COPY_EVENT_COLUMNS

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
"""The signature, no flags, no header extension."""

TRAILER = struct.pack(">h", -1)

_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_FIELDS = struct.pack(">h", len(COPY_EVENT_COLUMNS))
_INT4 = struct.Struct(">ii")  # length 4, value
_LENGTH = struct.Struct(">i")
_INT8 = struct.Struct(">iq")  # length 8, value
_JSONB_VERSION = b"\x01"


def timestamp_microseconds(moment: datetime) -> int:
    """A timezone-aware time as timestamptz's binary form counts it."""
    if moment.tzinfo is None:
        raise ValueError("recorded times must be timezone-aware")
    delta = moment - _POSTGRES_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def event_row(
    stream_id: str,
    stream_version: int,
    event_id: UUID,
    event_type: str,
    schema_version: int,
    data_json: bytes,
    metadata_json: bytes,
    recorded_at: datetime,
    prev_hash: bytes,
    hash_: bytes,
    hashed: bytes,
) -> bytes:
    """One row of the event table in COPY's binary form, in COPY_EVENT_COLUMNS order (data
    and metadata as JSON text, stored as jsonb)."""
    stream = stream_id.encode()
    kind = event_type.encode()
    length = _LENGTH.pack
    return b"".join(
        (
            _FIELDS,
            length(len(stream)),
            stream,
            _INT4.pack(4, stream_version),
            b"\x00\x00\x00\x10",
            event_id.bytes,
            length(len(kind)),
            kind,
            _INT4.pack(4, schema_version),
            length(len(data_json) + 1),
            _JSONB_VERSION,
            data_json,
            length(len(metadata_json) + 1),
            _JSONB_VERSION,
            metadata_json,
            _INT8.pack(8, timestamp_microseconds(recorded_at)),
            length(len(prev_hash)),
            prev_hash,
            length(len(hash_)),
            hash_,
            length(len(hashed)),
            hashed,
        )
    )
