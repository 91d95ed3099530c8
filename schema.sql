-- lending-ledger: the whole database schema, and its single source of truth.
--
-- Applied as a whole, idempotently: by the service at start-up, by `lending-ledger migrate`,
-- and by the tests. Safe to apply from several processes at once (the advisory lock below
-- serialises them) and safe to re-apply to a database that already has it.
-- Works on PostgreSQL 14 and newer (xid8 and pg_current_xact_id() need 13; CREATE OR
-- REPLACE TRIGGER needs 14).

BEGIN;

-- One schema migration at a time across all workers and processes.
SELECT pg_advisory_xact_lock(7250115081426013001);

-- ---------------------------------------------------------------------------------------
-- The event table: every stream, append-only.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS events (
    -- Global position: increasing, but NOT gap-free and NOT commit-ordered (see ledger_log).
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       text        NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
    stream_version  integer     NOT NULL CHECK (stream_version >= 1),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL CHECK (length(event_type) BETWEEN 1 AND 200),
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    data            jsonb       NOT NULL,
    -- actor, correlation_id, causation_id, idempotency_key
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    -- SHA-256 of the previous event of the same stream (32 zero bytes for version 1) and of
    -- this event's canonical envelope; see docs/architecture.md, "Hash chain".
    prev_hash       bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash            bytea       NOT NULL CHECK (octet_length(hash) = 32),
    -- The writing transaction. Filled by the database, never by the writer: the sequencer
    -- relies on it being the true id of the transaction that made the row visible.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- Optimistic concurrency: two writers that both expect version N cannot both append N+1.
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, stream_version)
);

-- The sequencer reads in (transaction_id, position) order.
CREATE INDEX IF NOT EXISTS events_transaction_order ON events (transaction_id, position);

-- ---------------------------------------------------------------------------------------
-- The ledger log: a contiguous sequence (1, 2, 3, ... no holes, ever) over committed events.
--
-- Why not read `events` by position? Positions come from a sequence when a row is inserted,
-- not when its transaction commits. Transaction A can take position 10, transaction B
-- position 11, and B can commit first: a reader that has seen 11 and remembers "after 11"
-- never sees 10. Rolled-back transactions leave holes that look exactly like deletions.
--
-- So one sequencer (the leader, chosen by advisory lock, see ledger/sequencer.py) copies
-- committed events into this log in a safe order. It reads only events whose transaction
-- id is below the xmin of its current snapshot: every transaction below xmin has finished,
-- so no event with such an id can still appear. It reads them in (transaction_id, position)
-- order with a compound cursor, not by position alone, because a transaction with an older
-- id can take a higher position than a younger one. The cursor is updated in the same
-- transaction as the log rows it covers, so a crash can never skip or repeat an event.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS ledger_log (
    seq       bigint PRIMARY KEY CHECK (seq >= 1),
    position  bigint NOT NULL UNIQUE REFERENCES events (position)
);

CREATE TABLE IF NOT EXISTS ledger_cursor (
    singleton            boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_transaction_id  xid8    NOT NULL,
    last_position        bigint  NOT NULL,
    last_seq             bigint  NOT NULL
);
INSERT INTO ledger_cursor (singleton, last_transaction_id, last_position, last_seq)
VALUES (true, '0', 0, 0)
ON CONFLICT (singleton) DO NOTHING;

-- ---------------------------------------------------------------------------------------
-- Immutability: the event table and the ledger log accept INSERT and SELECT only.
-- ---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_reject_mutation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'lending-ledger: % on table % is not allowed: the ledger is append-only',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation',
              HINT = 'Record a new event that corrects the old one instead.';
END;
$$;

CREATE OR REPLACE TRIGGER events_reject_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_mutation();
CREATE OR REPLACE TRIGGER events_reject_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation();
CREATE OR REPLACE TRIGGER ledger_log_reject_update_delete
    BEFORE UPDATE OR DELETE ON ledger_log
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_mutation();
CREATE OR REPLACE TRIGGER ledger_log_reject_truncate
    BEFORE TRUNCATE ON ledger_log
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation();

-- Wake the sequencer when events commit. NOTIFY is delivered at commit (never for a rolled
-- back transaction) and identical notifications of one transaction are folded into one, so
-- this costs one message per writing transaction, whoever the writer is.
CREATE OR REPLACE FUNCTION ledger_notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ledger_events_appended', '');
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER events_notify_appended
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_notify_appended();

-- ---------------------------------------------------------------------------------------
-- Read models. Derived data: rebuilt from the events at any time; never the source of truth.
-- Table names are unqualified in all projector SQL so a rebuild can target another schema.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS loan_applications (
    application_id         uuid PRIMARY KEY,
    applicant_id           text        NOT NULL,
    amount                 numeric     NOT NULL,
    income                 numeric     NOT NULL,
    employment_years       integer     NOT NULL,
    risk_score             numeric,
    decision               text,
    status                 text        NOT NULL,
    scoring_model          text,
    scoring_model_version  text,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    stream_version         integer     NOT NULL,
    last_event_position    bigint      NOT NULL
);

-- "An applicant's newest applications": equality on applicant, then newest first.
CREATE INDEX IF NOT EXISTS loan_applications_applicant_newest
    ON loan_applications (applicant_id, created_at DESC, application_id DESC);

-- One row per decision-relevant event of an application, for timelines.
CREATE TABLE IF NOT EXISTS application_history (
    application_id  uuid        NOT NULL,
    stream_version  integer     NOT NULL,
    event_position  bigint      NOT NULL,
    event_type      text        NOT NULL,
    status          text        NOT NULL,
    details         jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (application_id, stream_version)
);

-- Where each projection that the projection runner drives has got to in the ledger log.
-- Written in the same transaction as the read-model rows it covers.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection  text        PRIMARY KEY,
    last_seq    bigint      NOT NULL CHECK (last_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------
-- Idempotency: the first response to a keyed request, stored in the transaction that wrote
-- its events, replayed for every retry with the same key.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idempotency_key      text        PRIMARY KEY,
    request_fingerprint  bytea       NOT NULL,
    status_code          integer,
    response_body        bytea,
    created_at           timestamptz NOT NULL DEFAULT now()
);

COMMIT;
