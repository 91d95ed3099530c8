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

-- The exact canonical bytes the hash covers (docs/architecture.md, "Canonical encoding and
-- the hash chain"), written with the event: verify checks sha256(hashed) = hash and that the
-- columns say what these bytes say, set-based, without encoding anything again. NULL for
-- events written before the column existed (verify encodes those from their columns).
ALTER TABLE events ADD COLUMN IF NOT EXISTS hashed bytea;

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
    position  bigint NOT NULL UNIQUE
);

-- No FOREIGN KEY to events (an earlier schema had one; dropped here so an existing database
-- loses it too). Its check cost the sequencer a lookup per logged event and, worse, a FOR KEY
-- SHARE lock on the event's row: a write to that row's tuple header, with its own WAL
-- record, for every event (docs/benchmarks.md, "Issue 12: the database cost of one apply").
-- What it guarded is still guarded: the sequencer logs only positions it has just read from
-- events, and events cannot lose a row (the triggers below; the service role has no DELETE).
-- A log entry whose event is missing, however it came about, is found by `lending-ledger
-- verify` (projections/verify_sql.py, LOG_PROBLEMS: "not in the event table") and refused by
-- every seal (ledger/seal_sql.py: SELECT_LOG_SHAPE counts such entries, SELECT_LEAVES_TO_SEAL
-- finds no hash for them).
ALTER TABLE ledger_log DROP CONSTRAINT IF EXISTS ledger_log_position_fkey;

CREATE TABLE IF NOT EXISTS ledger_cursor (
    singleton            boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_transaction_id  xid8    NOT NULL,
    last_position        bigint  NOT NULL,
    last_seq             bigint  NOT NULL
);
INSERT INTO ledger_cursor (singleton, last_transaction_id, last_position, last_seq)
VALUES (true, '0', 0, 0)
ON CONFLICT (singleton) DO NOTHING;

-- One batch of the sequencer (ledger/sequencer.py, sequence_batch) in one round trip: lock
-- the cursor, log the next committed events (at most p_limit) below the horizon in
-- (transaction_id, position) order, move the cursor, and NOTIFY ledger_sequenced with the
-- new last seq when any were added (api/service/live.py wakes the SSE streams on it). Called
-- as a statement of its own, so all of it commits, or none of it, in that statement's
-- transaction. Returns how many it added and the cursor's last_seq after the batch.
--
-- Why the horizon is still safe inside one function: the function is VOLATILE (the default;
-- it must stay so), and in READ COMMITTED each statement of a VOLATILE PL/pgSQL function
-- runs with a fresh snapshot, which pg_current_snapshot() returns. The batch statement
-- starts after the cursor row is locked, so its snapshot is taken after any other
-- sequencer's batch that held the lock has committed: it sees that batch's log rows, and
-- reads from the cursor that batch left (FOR UPDATE returns the newest row version). Every
-- transaction below that snapshot's xmin had ended when it was taken, so each of their
-- events is visible to the same statement or never will be. A STABLE function, or the
-- whole batch as one SQL statement, would read with the calling statement's snapshot, taken
-- before the lock was granted.
CREATE OR REPLACE FUNCTION ledger_sequence_batch(p_limit integer)
RETURNS TABLE (added integer, last_seq bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_after_transaction_id xid8;
    v_after_position bigint;
    v_after_seq bigint;
    v_added integer;
    v_last_seq bigint;
BEGIN
    -- Most polls find nothing: they answer without locking the cursor. Locking a row takes
    -- a transaction id, and then the commit writes a record and waits for its WAL flush;
    -- this way an empty poll writes nothing at all. Finding something here only means a
    -- batch is worth taking: the batch below decides what it logs, from the cursor it
    -- reads again under the lock. (The cursor is read into variables first: compared with
    -- a joined row instead, the planner scans the whole event table.)
    SELECT c.last_transaction_id, c.last_position, c.last_seq
    INTO STRICT v_after_transaction_id, v_after_position, v_after_seq
    FROM ledger_cursor c;
    IF NOT EXISTS (
        SELECT 1 FROM events e
        WHERE (e.transaction_id, e.position) > (v_after_transaction_id, v_after_position)
          AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
    ) THEN
        RETURN QUERY SELECT 0, v_after_seq;
        RETURN;
    END IF;

    SELECT c.last_transaction_id, c.last_position, c.last_seq
    INTO STRICT v_after_transaction_id, v_after_position, v_after_seq
    FROM ledger_cursor c
    FOR UPDATE;

    WITH batch AS (
        SELECT e.position, e.transaction_id,
               row_number() OVER (ORDER BY e.transaction_id, e.position) AS n
        FROM events e
        WHERE (e.transaction_id, e.position) > (v_after_transaction_id, v_after_position)
          AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY e.transaction_id, e.position
        LIMIT p_limit
    ), logged AS (
        INSERT INTO ledger_log (seq, position)
        SELECT v_after_seq + b.n, b.position FROM batch b
        RETURNING 1
    ), newest AS (
        SELECT b.transaction_id, b.position, b.n FROM batch b ORDER BY b.n DESC LIMIT 1
    ), moved AS (
        UPDATE ledger_cursor AS c
        SET last_transaction_id = newest.transaction_id,
            last_position = newest.position,
            last_seq = v_after_seq + newest.n
        FROM newest
        RETURNING c.last_seq
    )
    SELECT (SELECT count(*) FROM logged), coalesce((SELECT m.last_seq FROM moved m), v_after_seq)
    INTO v_added, v_last_seq;

    IF v_added > 0 THEN
        PERFORM pg_notify('ledger_sequenced', v_last_seq::text);
    END IF;
    RETURN QUERY SELECT v_added, v_last_seq;
END;
$$;

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

-- ---------------------------------------------------------------------------------------
-- Seals: signed Merkle checkpoints over the ledger log (ledger/seals.py; docs/architecture.md,
-- "Seals and proofs"). Leaf i of the tree is the hash of the event at seq i + 1; hashing is
-- RFC 9162's. Both tables are append-only, like the events.
--
-- merkle_nodes holds every perfect subtree of the sealed tree: (height h, node_index i) is
-- the root of the 2^h leaves from i * 2^h (height 0: the leaf hashes). Any root or proof
-- node is composed from O(log n) of them, so no request rehashes the log. Rows are written
-- in the transaction of the seal that first covers them.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS merkle_nodes (
    height      smallint NOT NULL CHECK (height BETWEEN 0 AND 62),
    node_index  bigint   NOT NULL CHECK (node_index >= 0),
    hash        bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (height, node_index)
);

-- One row per seal. tree_size is the last sealed seq; the primary key makes a second seal
-- of the same size impossible whatever the sealers do. seal_hash is the SHA-256 of the
-- signed statement; previous_seal_hash chains each seal to the one before (32 zero bytes
-- for the first).
CREATE TABLE IF NOT EXISTS seals (
    tree_size           bigint      PRIMARY KEY CHECK (tree_size >= 1),
    root_hash           bytea       NOT NULL CHECK (octet_length(root_hash) = 32),
    previous_seal_hash  bytea       NOT NULL CHECK (octet_length(previous_seal_hash) = 32),
    sealed_at           timestamptz NOT NULL,
    key_id              text        NOT NULL CHECK (length(key_id) = 64),
    signature           bytea       NOT NULL CHECK (octet_length(signature) = 64),
    seal_hash           bytea       NOT NULL UNIQUE CHECK (octet_length(seal_hash) = 32)
);

CREATE OR REPLACE TRIGGER merkle_nodes_reject_update_delete
    BEFORE UPDATE OR DELETE ON merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_mutation();
CREATE OR REPLACE TRIGGER merkle_nodes_reject_truncate
    BEFORE TRUNCATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation();
CREATE OR REPLACE TRIGGER seals_reject_update_delete
    BEFORE UPDATE OR DELETE ON seals
    FOR EACH ROW EXECUTE FUNCTION ledger_reject_mutation();
CREATE OR REPLACE TRIGGER seals_reject_truncate
    BEFORE TRUNCATE ON seals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation();

-- No NOTIFY on the event table. An earlier schema woke the sequencer with a statement-level
-- trigger calling pg_notify. A notifying transaction takes a cluster-wide lock in its commit
-- and holds it through the WAL flush, so every writing transaction committed one after the
-- other and none shared a flush: the apply path ran at 0.37 to 0.41 of its speed without
-- the trigger (docs/benchmarks.md). The sequencer polls instead, adaptively
-- (ledger/sequencer.py). Dropped here so an existing database loses it too.
DROP TRIGGER IF EXISTS events_notify_appended ON events;
DROP FUNCTION IF EXISTS ledger_notify_appended();

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
    last_event_position    bigint      NOT NULL,
    submitted_by           text        NOT NULL DEFAULT 'unknown',
    decided_by             text,
    recommended_outcome    text,
    reason_codes           jsonb       NOT NULL DEFAULT '[]',
    in_review_since        timestamptz,
    reviewed_at            timestamptz
);

-- Columns added after the first release. A database from before gets them here, with the
-- defaults; `lending-ledger rebuild` then fills them from the events.
ALTER TABLE loan_applications
    ADD COLUMN IF NOT EXISTS submitted_by        text   NOT NULL DEFAULT 'unknown',
    ADD COLUMN IF NOT EXISTS decided_by          text,
    ADD COLUMN IF NOT EXISTS recommended_outcome text,
    ADD COLUMN IF NOT EXISTS reason_codes        jsonb  NOT NULL DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS in_review_since     timestamptz,
    ADD COLUMN IF NOT EXISTS reviewed_at         timestamptz;

-- "An applicant's newest applications": equality on applicant, then newest first.
CREATE INDEX IF NOT EXISTS loan_applications_applicant_newest
    ON loan_applications (applicant_id, created_at DESC, application_id DESC);

-- The review queues, oldest first: pending (in review) and completed (reviewed).
CREATE INDEX IF NOT EXISTS loan_applications_review_pending
    ON loan_applications (in_review_since, application_id) WHERE status = 'in_review';
CREATE INDEX IF NOT EXISTS loan_applications_review_completed
    ON loan_applications (reviewed_at, application_id) WHERE reviewed_at IS NOT NULL;

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

-- The last rebuild of each projection (projections/rebuild.py). 'running' is written when
-- it starts, 'succeeded' in the swap transaction; a 'running' row whose rebuild no longer
-- holds the projection's advisory lock was interrupted (its process died).
CREATE TABLE IF NOT EXISTS projection_rebuilds (
    projection   text        PRIMARY KEY,
    status       text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    events       bigint      NOT NULL DEFAULT 0,
    through_seq  bigint,
    row_counts   jsonb       NOT NULL DEFAULT '{}',
    error        text
);

-- ---------------------------------------------------------------------------------------
-- Idempotency: the first response to a keyed request, stored in the transaction that wrote
-- its events, replayed for every retry with the same key by the same caller.
--
-- Keys are scoped to the caller (`scope` is the principal's actor string), so two API keys
-- can never replay each other's responses. A row older than the retention
-- (LEDGER_IDEMPOTENCY_RETENTION_HOURS) counts as unused: the next claim replaces it, and
-- the service deletes such rows in small batches (ledger/idempotency.py).
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope                text        NOT NULL,
    idempotency_key      text        NOT NULL,
    request_fingerprint  bytea       NOT NULL,
    status_code          integer,
    response_body        bytea,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_scoped_pkey PRIMARY KEY (scope, idempotency_key)
);

-- A database from before scoping has the table keyed by idempotency_key alone. Every caller
-- was the open-mode principal `anonymous` then, so that is the scope its rows get.
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS scope text NOT NULL DEFAULT 'anonymous';
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'idempotency_keys'::regclass AND conname = 'idempotency_keys_scoped_pkey'
    ) THEN
        ALTER TABLE idempotency_keys ALTER COLUMN scope DROP DEFAULT;
        ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_pkey;
        ALTER TABLE idempotency_keys
            ADD CONSTRAINT idempotency_keys_scoped_pkey PRIMARY KEY (scope, idempotency_key);
    END IF;
END;
$$;

-- The purge deletes the oldest rows first, a batch at a time.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);

-- ---------------------------------------------------------------------------------------
-- Responses rendered by PostgreSQL (projections/sql.py, SELECT_APPLICANT_HISTORY_JSON): a
-- time exactly as the service's JSON writes it (api/jsonio.py, orjson): UTC, `+00:00`,
-- microseconds only when there are any; SQL NULL as JSON null.
-- ---------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION ledger_json_time(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN t IS NULL THEN 'null' ELSE
        '"' || to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM t)::bigint % 1000000 = 0 THEN ''
                ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
        || '+00:00"' END
$$;

-- ---------------------------------------------------------------------------------------
-- One command in one statement (api/service/commands.py; docs/architecture.md, "Commands").
--
-- Everything one command writes is one statement, in the single transaction it is: the
-- events (already hash-chained by the caller: a new stream starts from the genesis hash, an
-- existing one from the hash the caller read, and UNIQUE (stream_id, stream_version)
-- refuses the append if another writer got there first), the loan_applications row and
-- application_history entries, and, with an idempotency key, the claim and its stored
-- response. The statements are projections/sql.py's RUN_COMMAND and RUN_KEYED_COMMAND,
-- sent prepared by projections/inline.py. They were the plpgsql function ledger_command,
-- dropped here: its layer cost a tenth of the database's CPU per apply (docs/benchmarks.md,
-- "Issue 12: the database cost of one apply").
-- ---------------------------------------------------------------------------------------
DROP FUNCTION IF EXISTS ledger_command(
    text, text, bytea, interval, bigint, text, timestamptz, integer[], uuid[], text[],
    integer[], text[], text[], bytea[], bytea[], uuid, text, numeric, numeric, integer,
    numeric, text, text, text, text, timestamptz, text, text, text, text, timestamptz,
    timestamptz, integer[], text[], text[], integer, bytea[], integer[], bytea[]);
DROP FUNCTION IF EXISTS ledger_command(
    text, text, bytea, interval, bigint, text, timestamptz, json, uuid, text, numeric,
    numeric, integer, numeric, text, text, text, text, timestamptz, text, text, text, text,
    timestamptz, timestamptz, json, integer, bytea[], integer[]);

-- The idempotency claim of a keyed command, its first step (RUN_KEYED_COMMAND), with the
-- steps of ledger/idempotency.py: look up a live record of (scope, key); else try the key's
-- transaction-scoped advisory lock, never waiting; look up again (the holder may have
-- committed just before). One row: `outcome` is
--
--   'replayed'  a live record with the same fingerprint; status_code and body are its response
--   'reused'    a live record for a different request
--   'in_flight' another transaction holds the key's lock
--   'claimed'   none of these: the lock is held, the command may write and store its record,
--               taking over an expired one as if the key were unused
--
-- VOLATILE (the default) matters: in READ COMMITTED each statement of a volatile function
-- takes a fresh snapshot, so the second look-up sees a holder that committed after the
-- calling statement's snapshot was taken.
CREATE OR REPLACE FUNCTION ledger_claim(
    p_scope text, p_key text, p_fingerprint bytea, p_retention interval, p_lock bigint
) RETURNS TABLE (outcome text, status_code integer, body bytea)
LANGUAGE plpgsql AS $$
DECLARE
    v_fingerprint bytea;
BEGIN
    -- Written out rather than as a loop: each plpgsql expression is compiled again in every
    -- transaction, and every command is a transaction of its own.
    SELECT k.request_fingerprint, k.status_code, k.response_body
    INTO v_fingerprint, status_code, body
    FROM idempotency_keys k
    WHERE k.scope = p_scope AND k.idempotency_key = p_key
      AND k.created_at > now() - p_retention;
    IF NOT FOUND THEN
        IF NOT pg_try_advisory_xact_lock(p_lock) THEN
            outcome := 'in_flight';
            RETURN NEXT;
            RETURN;
        END IF;
        SELECT k.request_fingerprint, k.status_code, k.response_body
        INTO v_fingerprint, status_code, body
        FROM idempotency_keys k
        WHERE k.scope = p_scope AND k.idempotency_key = p_key
          AND k.created_at > now() - p_retention;
        IF NOT FOUND THEN
            outcome := 'claimed';
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    IF v_fingerprint = p_fingerprint THEN
        outcome := 'replayed';
    ELSE
        outcome := 'reused';
        status_code := NULL;
        body := NULL;
    END IF;
    RETURN NEXT;
END;
$$;

-- Aborts the calling statement with `message`: for a state a statement must never commit.
CREATE OR REPLACE FUNCTION ledger_raise(message text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'lending-ledger: %', message;
END;
$$;

-- ---------------------------------------------------------------------------------------
-- API keys. A key is `ll_<id>_<secret>` with a 256-bit random secret; only its SHA-256 is
-- stored (api/keystore.py says why a fast hash is right here). Keys are revoked, never
-- deleted: the name stays behind the actor recorded in old events.
-- ---------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS api_keys (
    id          text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    role        text        NOT NULL CHECK (role IN ('agent', 'analyst', 'auditor', 'admin')),
    hash        bytea       NOT NULL CHECK (octet_length(hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Which schema.sql was applied last (SHA-256 of the file), written by every application
-- (ledger/schema.py). A service role that cannot apply the schema checks it instead: it
-- serves only a database whose schema is the one it ships.
CREATE TABLE IF NOT EXISTS schema_applied (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    sha256      bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------
-- The service's database role: what the running service may do, and nothing more.
--
-- `lending_ledger_app` is a NOLOGIN group role. The service logs in as a member of it
-- (`lending_ledger_service` with the embedded database; your own role otherwise, see
-- docs/operations.md), never as the owner of these tables. It may INSERT and SELECT the
-- event table and the ledger log but never UPDATE, DELETE or TRUNCATE them: the database
-- refuses with insufficient_privilege before the immutability triggers are even reached.
-- Schema changes need the owner (`lending-ledger migrate`).
--
-- Roles are cluster-wide, so creating it tolerates another database (or a concurrent
-- migration) having created it first.
--
-- WHOEVER ADDS A TABLE: grant the service what it needs on it in the block below (or
-- nothing, deliberately), and record the decision in tests/test_db_role.py, which fails
-- for any table in the public schema without one. Keep this block last in the file.
-- ---------------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lending_ledger_app') THEN
        CREATE ROLE lending_ledger_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;

-- Start from nothing, so a privilege removed below is removed from the database too.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM lending_ledger_app;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM lending_ledger_app;
GRANT USAGE ON SCHEMA public TO lending_ledger_app;

-- Append-only: the ledger.
GRANT SELECT, INSERT ON events, ledger_log TO lending_ledger_app;
-- Seals and their Merkle nodes are append-only too (POST /admin/seals writes them).
GRANT SELECT, INSERT ON seals, merkle_nodes TO lending_ledger_app;
-- The sequencer's cursor: one row, moved forward.
GRANT SELECT, UPDATE ON ledger_cursor TO lending_ledger_app;
-- Read models and service state: derived or operational data, rewritten freely.
GRANT SELECT, INSERT, UPDATE, DELETE
    ON loan_applications, application_history, projection_checkpoints, idempotency_keys
    TO lending_ledger_app;
-- Rebuild status: GET /admin/projections reads it; a rebuild records its progress in it.
GRANT SELECT, INSERT, UPDATE ON projection_rebuilds TO lending_ledger_app;
-- Keys: created and revoked through the admin endpoints; a key's hash is never changed.
GRANT SELECT, INSERT ON api_keys TO lending_ledger_app;
GRANT UPDATE (revoked_at) ON api_keys TO lending_ledger_app;
-- Read only: the service checks the schema is current, `migrate` (the owner) writes it.
GRANT SELECT ON schema_applied TO lending_ledger_app;
-- Identity and serial columns draw from sequences.
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO lending_ledger_app;

COMMIT;
