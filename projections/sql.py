"""Every SQL statement of the read side, by name. Values only ever as $n parameters.

Table names are unqualified on purpose: the projection runner can point `search_path` at a
shadow schema and build the same tables there.
"""

from __future__ import annotations

APPLICATION_COLUMNS = """
    application_id, applicant_id, amount, income, employment_years, risk_score, decision,
    status, scoring_model, scoring_model_version, created_at, updated_at, stream_version,
    last_event_position, submitted_by, decided_by, recommended_outcome, reason_codes,
    in_review_since, reviewed_at
"""

SELECT_APPLICATIONS_BY_ID = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications WHERE application_id = ANY($1::uuid[])
"""

# An application's row written again: what a later event can change. The Python fold's batch
# upsert and the command statement both write rows this way.
APPLICATION_UPSERT = """
ON CONFLICT (application_id) DO UPDATE SET
    risk_score = EXCLUDED.risk_score,
    decision = EXCLUDED.decision,
    status = EXCLUDED.status,
    scoring_model = EXCLUDED.scoring_model,
    scoring_model_version = EXCLUDED.scoring_model_version,
    updated_at = EXCLUDED.updated_at,
    stream_version = EXCLUDED.stream_version,
    last_event_position = EXCLUDED.last_event_position,
    decided_by = EXCLUDED.decided_by,
    recommended_outcome = EXCLUDED.recommended_outcome,
    reason_codes = EXCLUDED.reason_codes,
    in_review_since = EXCLUDED.in_review_since,
    reviewed_at = EXCLUDED.reviewed_at
"""

# reason_codes travel as JSON text: asyncpg would read a list inside the jsonb[] array
# parameter as another array dimension.
UPSERT_APPLICATIONS = f"""
INSERT INTO loan_applications ({APPLICATION_COLUMNS})
SELECT u.application_id, u.applicant_id, u.amount, u.income, u.employment_years, u.risk_score,
       u.decision, u.status, u.scoring_model, u.scoring_model_version, u.created_at,
       u.updated_at, u.stream_version, u.last_event_position, u.submitted_by, u.decided_by,
       u.recommended_outcome, u.reason_codes::jsonb, u.in_review_since, u.reviewed_at
FROM unnest($1::uuid[], $2::text[], $3::numeric[], $4::numeric[], $5::integer[],
            $6::numeric[], $7::text[], $8::text[], $9::text[], $10::text[],
            $11::timestamptz[], $12::timestamptz[], $13::integer[], $14::bigint[],
            $15::text[], $16::text[], $17::text[], $18::text[], $19::timestamptz[],
            $20::timestamptz[])
     AS u(application_id, applicant_id, amount, income, employment_years, risk_score,
          decision, status, scoring_model, scoring_model_version, created_at, updated_at,
          stream_version, last_event_position, submitted_by, decided_by, recommended_outcome,
          reason_codes, in_review_since, reviewed_at)
{APPLICATION_UPSERT}"""

INSERT_HISTORY = """
INSERT INTO application_history (application_id, stream_version, event_position, event_type,
                                 status, details, recorded_at)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::bigint[], $4::text[], $5::text[],
                     $6::jsonb[], $7::timestamptz[])
"""

SELECT_APPLICANT_HISTORY = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications
WHERE applicant_id = $1
ORDER BY created_at DESC, application_id DESC
LIMIT $2
"""

# Keyset pagination over the partial indexes loan_applications_review_pending / _completed:
# (time, id) > (cursor) continues exactly after the last row of the previous page.
SELECT_REVIEWS_PENDING = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications
WHERE status = 'in_review' AND (in_review_since, application_id) > ($1, $2)
ORDER BY in_review_since, application_id
LIMIT $3
"""

SELECT_REVIEWS_COMPLETED = f"""
SELECT {APPLICATION_COLUMNS} FROM loan_applications
WHERE reviewed_at IS NOT NULL AND (reviewed_at, application_id) > ($1, $2)
ORDER BY reviewed_at, application_id
LIMIT $3
"""

SELECT_ALL_APPLICATIONS = f"SELECT {APPLICATION_COLUMNS} FROM loan_applications"

SELECT_ALL_HISTORY = """
SELECT application_id, stream_version, event_position, event_type, status, details, recorded_at
FROM application_history
"""

SELECT_CHECKPOINT = "SELECT last_seq FROM projection_checkpoints WHERE projection = $1"

SAVE_CHECKPOINT = """
INSERT INTO projection_checkpoints (projection, last_seq, updated_at) VALUES ($1, $2, now())
ON CONFLICT (projection) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()
"""

SET_SEARCH_PATH = "SELECT set_config('search_path', $1, true)"

# --- The applications projection, set-based (rebuilds; projections/applications.py) ---
#
# The same fold as `projections.applications.project`, over a window of the ledger log
# (seq in ($1, $2]) at once: window functions over each stream's events in version order,
# then one aggregate per stream merged with the row the stream had before the window.
# Only streams the SQL can vouch for are folded here: every event of a known (type,
# schema version) -- v1 ApplicationSubmitted and v1 ApplicationDecided are upcast here
# exactly as ledger/events.py upcasts them -- whose data has every field the decoder reads,
# of the JSON type it needs, in the exact form `str(Decimal)` writes back (decimals without
# leading zeros or exponents, at most 6 fractional digits). APPLICATIONS_LEFT_TO_PYTHON
# names every other stream of the window; the Python fold handles those (and reports the
# event it cannot fold, as the runner does).

_DECIMAL = "'^-?(0|[1-9][0-9]*)([.][0-9]{1,6})?$'"
_INTEGER = "'^-?(0|[1-9][0-9]{0,8})$'"


def _field_check(path: str, kind: str) -> str:
    value = f"e.data{path}"
    text = f"({value} #>> '{{}}')"
    return {
        "string": f"jsonb_typeof({value}) = 'string'",
        "nullable": f"jsonb_typeof({value}) IN ('string', 'null')",
        "decimal": f"(jsonb_typeof({value}) = 'string' AND {text} ~ {_DECIMAL})",
        "integer": f"(jsonb_typeof({value}) = 'number' AND {text} ~ {_INTEGER})",
        "array": f"jsonb_typeof({value}) = 'array'",
        "reasons": (
            f"(jsonb_typeof({value}) = 'array' AND NOT jsonb_path_exists({value}, "
            "'$[*] ? (!exists(@.code) || !exists(@.text))', '{}', true))"
        ),
        "decision": f"({value} #>> '{{}}') IN ('approved', 'review')",
        "outcome": f"({value} #>> '{{}}') IN ('approved', 'declined')",
        # the stream's own application (`$1` is the stream prefix): one comparison, where a
        # uuid pattern per event would cost more than the rest of the checks together
        "application_id": f"({text} = substr(e.stream_id, length($1) + 1))",
    }[kind]


_SUBMITTED_V1 = {
    "application_id": "application_id",
    "applicant_id": "string",
    "amount": "decimal",
    "income": "decimal",
    "employment_years": "integer",
}
_DECIDED_V1 = {
    "application_id": "application_id",
    "decision": "decision",
    "decided_by": "string",
    "rule": "string",
}
FOLDABLE_EVENTS: dict[tuple[str, int], dict[str, str]] = {
    ("ApplicationSubmitted", 1): _SUBMITTED_V1,
    ("ApplicationSubmitted", 2): {**_SUBMITTED_V1, "submitted_by": "string"},
    ("ApplicationScored", 1): {
        "application_id": "application_id",
        "model_name": "string",
        "model_version": "string",
        "model_fingerprint": "string",
        "inputs": "string",  # replaced below by the three input checks
        "risk_score": "decimal",
        "reason_codes": "array",
    },
    ("ApplicationDecided", 1): _DECIDED_V1,
    ("ApplicationDecided", 2): {**_DECIDED_V1, "recommended_outcome": "nullable"},
    ("ManualReviewRequested", 1): {
        "application_id": "application_id",
        "requested_by": "string",
        "reason": "string",
    },
    ("ApplicationReviewed", 1): {
        "application_id": "application_id",
        "outcome": "outcome",
        "reviewer": "string",
        "reason_codes": "reasons",
        "justification": "string",
        "catalogue": "string",
    },
    ("ApplicationWithdrawn", 1): {
        "application_id": "application_id",
        "withdrawn_by": "string",
        "channel": "string",
        "reason": "string",
    },
    ("AgentActionRecorded", 1): {
        "application_id": "application_id",
        "agent_id": "string",
        "model_name": "string",
        "prompt": "nullable",
        "prompt_sha256": "string",
        "prompt_ref": "nullable",
        "output": "string",
        "action": "string",
        "rationale": "string",
    },
}
"""(event type, schema version) -> the fields its decoder reads and what each must be."""


def _event_checks() -> str:
    cases = []
    for (event_type, version), fields in FOLDABLE_EVENTS.items():
        checks = []
        for name, kind in fields.items():
            if name == "inputs":
                checks += [
                    "jsonb_typeof(e.data->'inputs') = 'object'",
                    _field_check("->'inputs'->'amount'", "decimal"),
                    _field_check("->'inputs'->'income'", "decimal"),
                    _field_check("->'inputs'->'employment_years'", "integer"),
                ]
            else:
                checks.append(_field_check(f"->'{name}'", kind))
        cases.append(
            f"WHEN e.event_type = '{event_type}' AND e.schema_version = {version} THEN "
            + " AND ".join(checks)
        )
    return "CASE " + " ".join(cases) + " ELSE false END"


# --- The whole fold, set-based ---
#
# Every statement below folds a *set of whole streams* from nothing (no row before their
# first event): a rebuild's shadow (the log up to the sequencer's cursor), a bulk import's
# new streams (the events of its own transaction), and verify's comparison (every event in
# its snapshot). Each takes its events from `public.events` through a source condition on
# `e` ($1 is always the stream prefix). The rows are the same fold as
# `projections.applications.project`, which stays the reference (a property test holds the
# two equal, v1 events and unusual data included).

REBUILD_SOURCE = """
(e.transaction_id, e.position) <= ($2::xid8, $3::bigint)
AND ($4::integer <= 1 OR abs(hashtext(e.stream_id) % $4::integer) = $5::integer)
"""
"""A rebuild's share of the log: every event the sequencer has logged up to its cursor
($2, $3: last_transaction_id, last_position; the log and the cursor are written in one
transaction, so that set is exactly the log through last_seq), split into $4 parts by a
hash of the stream id (part $5), one per connection."""

IMPORT_SOURCE = "e.transaction_id = pg_current_xact_id()"
"""A bulk import's batch: the events its own transaction wrote (the events_transaction_order
index finds them)."""

VERIFY_SOURCE = "($2::integer <= 1 OR abs(hashtext(e.stream_id) % $2::integer) = $3::integer)"
"""verify: every event of the snapshot, split into $2 parts (part $3)."""

_SETS_STATUS = """
CASE e.event_type
    WHEN 'ApplicationSubmitted' THEN 'submitted'
    WHEN 'ApplicationScored' THEN 'scored'
    WHEN 'ApplicationDecided' THEN
        CASE e.data->>'decision' WHEN 'approved' THEN 'approved' ELSE 'in_review' END
    WHEN 'ManualReviewRequested' THEN 'in_review'
    WHEN 'ApplicationReviewed' THEN e.data->>'outcome'
    WHEN 'ApplicationWithdrawn' THEN 'withdrawn'
END
"""


_HISTORY_DETAILS = """
CASE f.event_type
    WHEN 'ApplicationSubmitted' THEN jsonb_build_object(
        'amount', f.data->'amount', 'income', f.data->'income',
        'employment_years', f.data->'employment_years',
        'submitted_by', CASE WHEN f.schema_version = 1 THEN to_jsonb('unknown'::text)
                             ELSE f.data->'submitted_by' END)
    WHEN 'ApplicationScored' THEN jsonb_build_object(
        'model', (f.data->>'model_name') || '-' || (f.data->>'model_version'),
        'model_fingerprint', f.data->'model_fingerprint',
        'risk_score', f.data->'risk_score', 'reason_codes', f.data->'reason_codes')
    WHEN 'ApplicationDecided' THEN jsonb_build_object(
        'decision', f.data->'decision', 'decided_by', f.data->'decided_by',
        'rule', f.data->'rule',
        'recommended_outcome', CASE WHEN f.schema_version = 1 THEN 'null'::jsonb
                                    ELSE f.data->'recommended_outcome' END)
    WHEN 'ManualReviewRequested' THEN jsonb_build_object(
        'requested_by', f.data->'requested_by', 'reason', f.data->'reason')
    WHEN 'ApplicationReviewed' THEN jsonb_build_object(
        'outcome', f.data->'outcome', 'reviewer', f.data->'reviewer',
        'reason_codes', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('code', r.item->'code',
                                                         'text', r.item->'text')
                                      ORDER BY r.n), '[]'::jsonb)
            FROM jsonb_array_elements(f.data->'reason_codes') WITH ORDINALITY AS r(item, n)),
        'justification', f.data->'justification')
    WHEN 'ApplicationWithdrawn' THEN jsonb_build_object(
        'withdrawn_by', f.data->'withdrawn_by', 'channel', f.data->'channel',
        'reason', f.data->'reason')
    WHEN 'AgentActionRecorded' THEN jsonb_build_object(
        'agent_id', f.data->'agent_id', 'model_name', f.data->'model_name',
        'action', f.data->'action', 'rationale', f.data->'rationale',
        'prompt_sha256', f.data->'prompt_sha256')
END
"""


def _canonical_uuid(text: str) -> str:
    """A lowercase hyphenated uuid. Bounded repetitions ({8}) make PostgreSQL's regular
    expressions several times slower, so the groups' lengths come from the hyphens'
    places instead."""
    return (
        f"(length({text}) = 36 AND {text} ~ '^[0-9a-f]+-[0-9a-f]+-[0-9a-f]+-[0-9a-f]+-[0-9a-f]+$'"
        f" AND substr({text}, 9, 1) = '-' AND substr({text}, 14, 1) = '-'"
        f" AND substr({text}, 19, 1) = '-' AND substr({text}, 24, 1) = '-')"
    )


def unfoldable_streams(source: str) -> str:
    """The streams of `source` the SQL cannot vouch for, as one text[]: an event of another
    (type, schema version) than FOLDABLE_EVENTS knows, a field missing or of the wrong JSON
    type, a decimal not in the form `str(Decimal)` writes back, an ApplicationSubmitted
    anywhere but version 1 or naming another application, versions that do not run 1..n,
    or a stream id without a uuid. The Python fold takes those (and names the event it
    cannot fold). A missing field makes its check NULL, not false, and bool_and skips
    NULLs: hence the coalesce, without which such a stream would pass."""
    return f"""
SELECT coalesce(array_agg(t.stream_id), '{{}}')
FROM (
    SELECT e.stream_id
    FROM public.events e
    WHERE starts_with(e.stream_id, $1) AND ({source})
    GROUP BY e.stream_id
    HAVING NOT (
        bool_and(coalesce(
            (e.event_type = 'ApplicationSubmitted') = (e.stream_version = 1)
            AND ({_event_checks()}), false))
        AND min(e.stream_version) = 1 AND max(e.stream_version) = count(*)
        AND {_canonical_uuid("substr(e.stream_id, length($1) + 1)")})
) t
"""


def _fold_steps(source: str, left: str) -> str:
    """Each event of the folded streams, in one sort by (application, version) and window
    functions over it: the status after and before the event (the last status-setting event
    so far: an agent action sets none) and, running over the stream so far, what the
    application row takes (the last score, decision, decider, ...), so that a stream's last
    event carries its whole row. The second level (when the stream last entered review)
    needs the first level's statuses; it reads them in the order they come, without a
    second sort. `left`: the parameter holding the streams left to the Python fold."""
    return f"""
    SELECT v.*,
           array_agg(v.recorded_at) FILTER (
                WHERE v.status = 'in_review' AND v.status_before IS DISTINCT FROM 'in_review')
                OVER upto2 AS entered_review
    FROM (
        SELECT w.*,
               w.set_through[cardinality(w.set_through)] AS status,
               w.set_before[cardinality(w.set_before)] AS status_before
        FROM (
            SELECT s.*,
                   lead(s.stream_version) OVER upto IS NULL AS is_last,
                   first_value(s.data) OVER upto AS sub,
                   first_value(s.schema_version) OVER upto AS sub_version,
                   first_value(s.recorded_at) OVER upto AS sub_at,
                   array_agg(s.sets_status) FILTER (WHERE s.sets_status IS NOT NULL)
                       OVER upto AS set_through,
                   array_agg(s.sets_status) FILTER (WHERE s.sets_status IS NOT NULL)
                       OVER before AS set_before,
                   array_agg(s.data) FILTER (WHERE s.event_type = 'ApplicationScored')
                       OVER upto AS scored,
                   array_agg(CASE WHEN s.schema_version = 1 THEN 'null'::jsonb
                                  ELSE s.data->'recommended_outcome' END)
                       FILTER (WHERE s.event_type = 'ApplicationDecided') OVER upto
                       AS recommended,
                   array_agg(CASE s.event_type
                                 WHEN 'ApplicationDecided' THEN s.data->>'decision'
                                 WHEN 'ManualReviewRequested' THEN 'review'
                                 ELSE s.data->>'outcome' END)
                       FILTER (WHERE s.event_type IN ('ApplicationDecided',
                                                      'ManualReviewRequested',
                                                      'ApplicationReviewed')) OVER upto
                       AS decisions,
                   array_agg(CASE s.event_type
                                 WHEN 'ApplicationDecided' THEN s.data->>'decided_by'
                                 ELSE s.data->>'reviewer' END)
                       FILTER (WHERE s.event_type IN ('ApplicationDecided',
                                                      'ApplicationReviewed')) OVER upto
                       AS deciders,
                   array_agg(s.recorded_at)
                       FILTER (WHERE s.event_type = 'ApplicationReviewed') OVER upto
                       AS reviews
            FROM (
                SELECT e.stream_id, e.stream_version, e.position, e.event_type,
                       e.schema_version, e.data, e.recorded_at,
                       substr(e.stream_id, length($1) + 1)::uuid AS key,
                       {_SETS_STATUS} AS sets_status
                FROM public.events e
                WHERE starts_with(e.stream_id, $1) AND ({source})
                  AND e.stream_id <> ALL ({left}::text[])
            ) s
            WINDOW upto AS (PARTITION BY s.key ORDER BY s.stream_version
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
                   before AS (PARTITION BY s.key ORDER BY s.stream_version
                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
        ) w
    ) v
    WINDOW upto2 AS (PARTITION BY v.key ORDER BY v.stream_version
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
"""


_HISTORY_ROWS = f"""
SELECT f.key AS application_id, f.stream_version, f.position AS event_position,
       f.event_type, f.status, {_HISTORY_DETAILS} AS details, f.recorded_at
FROM steps f
"""

# A stream's last event carries the stream's row (the running windows at its end).
_APPLICATION_ROWS = """
SELECT t.key AS application_id,
       t.sub->>'applicant_id' AS applicant_id,
       (t.sub->>'amount')::numeric AS amount,
       (t.sub->>'income')::numeric AS income,
       (t.sub->>'employment_years')::integer AS employment_years,
       (t.scored->>'risk_score')::numeric AS risk_score,
       t.decision,
       t.status,
       t.scored->>'model_name' AS scoring_model,
       t.scored->>'model_version' AS scoring_model_version,
       t.sub_at AS created_at,
       t.recorded_at AS updated_at,
       t.stream_version,
       t.position AS last_event_position,
       CASE WHEN t.sub_version = 1 THEN 'unknown' ELSE t.sub->>'submitted_by' END
           AS submitted_by,
       t.decided_by,
       t.recommended #>> '{}' AS recommended_outcome,
       coalesce(t.scored->'reason_codes', '[]'::jsonb) AS reason_codes,
       t.in_review_since,
       t.reviewed_at
FROM (
    SELECT f.key, f.stream_version, f.position, f.recorded_at, f.status, f.sub,
           f.sub_version, f.sub_at,
           f.scored[cardinality(f.scored)] AS scored,
           f.recommended[cardinality(f.recommended)] AS recommended,
           f.decisions[cardinality(f.decisions)] AS decision,
           f.deciders[cardinality(f.deciders)] AS decided_by,
           f.reviews[cardinality(f.reviews)] AS reviewed_at,
           f.entered_review[cardinality(f.entered_review)] AS in_review_since
    FROM steps f
    WHERE f.is_last
) t
"""

_HISTORY_COLUMNS = (
    "application_id, stream_version, event_position, event_type, status, details, recorded_at"
)


def fold_applications_into(source: str, left: str) -> str:
    """One statement: the folded streams' rows inserted into both tables on `search_path`
    (a rebuild's empty shadow, or the live tables for an import's new streams)."""
    return f"""
WITH steps AS MATERIALIZED ({_fold_steps(source, left)}),
history AS (
    INSERT INTO application_history ({_HISTORY_COLUMNS})
    {_HISTORY_ROWS}
)
INSERT INTO loan_applications ({APPLICATION_COLUMNS})
{_APPLICATION_ROWS}
"""


def fold_applications_differences(source: str, left: str) -> str:
    """verify: the application ids whose stored rows (either table) differ from the fold,
    in both directions (a row missing, extra or different). Read-only: nothing is written.

    Each table is compared by one hash full join on its key (a row on one side only, or
    both with any column distinct, NULLs equal as EXCEPT treats them); the keys are unique
    on both sides (primary keys; one folded row per stream and per event), so this finds
    exactly what `EXCEPT ALL` both ways found, hashing each side once instead of twice."""
    return f"""
WITH steps AS MATERIALIZED ({_fold_steps(source, left)}),
folded_applications AS ({_APPLICATION_ROWS}),
folded_history AS ({_HISTORY_ROWS}),
stored_applications AS (
    SELECT {APPLICATION_COLUMNS} FROM loan_applications a
    WHERE {source.replace("e.stream_id", "($1 || a.application_id::text)")}
),
stored_history AS (
    SELECT {_HISTORY_COLUMNS} FROM application_history a
    WHERE {source.replace("e.stream_id", "($1 || a.application_id::text)")}
)
SELECT coalesce(array_agg(DISTINCT d.application_id), '{{}}')
FROM (
    SELECT coalesce(f.application_id, s.application_id) AS application_id
    FROM folded_applications f
    FULL JOIN stored_applications s ON s.application_id = f.application_id
    WHERE ROW(f.*) IS DISTINCT FROM ROW(s.*)
    UNION ALL
    SELECT coalesce(f.application_id, s.application_id)
    FROM folded_history f
    FULL JOIN stored_history s
        ON s.application_id = f.application_id AND s.stream_version = f.stream_version
    WHERE ROW(f.*) IS DISTINCT FROM ROW(s.*)
) d
"""


# The statements, one per source. $1: the stream prefix; the source's own parameters next;
# the last parameter of a fold: the streams the Python fold takes instead.
UNFOLDABLE_IN_LOG = unfoldable_streams(REBUILD_SOURCE)
FOLD_LOG_INTO = fold_applications_into(REBUILD_SOURCE, "$6")
UNFOLDABLE_IN_TRANSACTION = unfoldable_streams(IMPORT_SOURCE)
FOLD_TRANSACTION_INTO = fold_applications_into(IMPORT_SOURCE, "$2")
UNFOLDABLE_IN_SNAPSHOT = unfoldable_streams(VERIFY_SOURCE)
FOLD_DIFFERENCES = fold_applications_differences(VERIFY_SOURCE, "$4")

# The events of the streams left to the Python fold ($1), in stream order, up to the
# sequencer's cursor ($2, $3; NULL: every event).
SELECT_EVENTS_OF_STREAMS = """
SELECT e.position, l.seq, e.stream_id, e.stream_version, e.event_id, e.event_type,
       e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
FROM public.events e LEFT JOIN public.ledger_log l ON l.position = e.position
WHERE e.stream_id = ANY ($1::text[])
  AND ($2::xid8 IS NULL OR (e.transaction_id, e.position) <= ($2::xid8, $3::bigint))
ORDER BY e.stream_id, e.stream_version
"""

SET_LOCAL = "SELECT set_config($1, $2, true)"

SELECT_CURSOR = """
SELECT last_transaction_id, last_position, last_seq FROM public.ledger_cursor
"""

# The events the current transaction appended, in stream order (a bulk import's batch).
SELECT_OWN_TRANSACTION_EVENTS = """
SELECT e.position, NULL::bigint AS seq, e.stream_id, e.stream_version, e.event_id,
       e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
FROM public.events e
WHERE e.transaction_id = pg_current_xact_id()
ORDER BY e.stream_id, e.stream_version
"""

# --- One command's whole write in one statement (projections/inline.py) ---
#
# Data-modifying CTEs: the events, the application's loan_applications row and its
# application_history entries (folded by the caller, projections/applications.py; only the
# positions are filled in here). Sent as a prepared statement, not as a call of a plpgsql
# function: the function's layer (its call, its expressions compiled again in every
# transaction) cost about 70-90 us of the database's CPU per apply, a tenth of it
# (docs/benchmarks.md, "Issue 12: the database cost of one apply"). Each data-modifying CTE
# runs exactly once and to completion, read or not; all of them see the statement's one
# snapshot, and UNIQUE (stream_id, stream_version) refuses the events if another writer
# appended first, rolling the whole statement back.
#
# Parameters (projections/inline.py, WRITE_PARAMETERS): $1 stream id, $2 recorded at, $3 the
# events as one JSON array in stream-version order ({stream_version, event_id, event_type,
# schema_version, data, metadata, prev_hash, hash, hashed}; binary values in hex: one JSON
# text costs the client one string, where every element of an array parameter is checked),
# $4 to $20 the row's columns, $21 the history entries as one JSON array ({stream_version,
# event_type, status, details}). The two arrays are jsonb, not json: parsed once, their
# data, metadata and details are taken as the jsonb they are stored as, where json would
# parse each again (about 20 us per apply). `gate` is defined by each statement: whether
# to write.
_COMMAND_WRITE = f"""
inserted AS (
    INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                        data, metadata, recorded_at, prev_hash, hash, hashed)
    SELECT $1::text, u.stream_version, u.event_id, u.event_type, u.schema_version, u.data,
           u.metadata, $2::timestamptz, decode(u.prev_hash, 'hex'), decode(u.hash, 'hex'),
           decode(u.hashed, 'hex')
    FROM gate g, jsonb_to_recordset($3::jsonb)
         AS u(stream_version integer, event_id uuid, event_type text, schema_version integer,
              data jsonb, metadata jsonb, prev_hash text, hash text, hashed text)
    WHERE g.open
    -- Positions increase along the stream.
    ORDER BY u.stream_version
    RETURNING stream_version, position
), written AS (
    SELECT array_agg(position ORDER BY stream_version) AS positions,
           max(position) AS last_position, min(stream_version) AS first_version,
           max(stream_version) AS last_version
    FROM inserted
    HAVING count(*) > 0
), application AS (
    INSERT INTO loan_applications (
        application_id, applicant_id, amount, income, employment_years, risk_score, decision,
        status, scoring_model, scoring_model_version, created_at, updated_at, stream_version,
        last_event_position, submitted_by, decided_by, recommended_outcome, reason_codes,
        in_review_since, reviewed_at)
    SELECT $4::uuid, $5::text, $6::numeric, $7::numeric, $8::integer, $9::numeric, $10::text,
           $11::text, $12::text, $13::text, $14::timestamptz, $2::timestamptz,
           w.last_version, w.last_position, $15::text, $16::text, $17::text, $18::jsonb,
           $19::timestamptz, $20::timestamptz
    FROM written w
    {APPLICATION_UPSERT}), history AS (
    INSERT INTO application_history (application_id, stream_version, event_position,
                                     event_type, status, details, recorded_at)
    SELECT $4::uuid, h.stream_version, w.positions[h.stream_version - w.first_version + 1],
           h.event_type, h.status, h.details, $2::timestamptz
    FROM written w, jsonb_to_recordset($21::jsonb)
         AS h(stream_version integer, event_type text, status text, details jsonb)
)"""

# A command without an idempotency key: write, and return the positions (the caller renders
# the response from them; nothing stores it).
RUN_COMMAND = f"""
WITH gate AS (SELECT true AS open), {_COMMAND_WRITE}
SELECT 'applied'::text AS r_outcome, NULL::integer AS r_status_code, NULL::bytea AS r_body,
       w.positions AS r_positions
FROM written w
"""

# A command with an idempotency key ($22 scope, $23 key, $24 request fingerprint, $25
# retention, $26 the key's advisory lock id): `ledger_claim` (schema.sql) runs the steps of
# ledger/idempotency.py first, and only a claim opens the gate. Then the response is
# completed with the positions ($28 the template's parts, $29 its slots: ResponseTemplate)
# and stored with the key and status ($27). The outcome (r_outcome):
#
#   'applied'   written; r_positions are the events' positions, r_body the response
#   'replayed'  a live record of (scope, key) with the same fingerprint: nothing written,
#               r_status_code and r_body are the first response
#   'reused'    a live record of (scope, key) for a different request: nothing written
#   'in_flight' another transaction holds the key's lock: nothing written
#
# Only a holder of the key's lock stores a claim, so `stored` cannot meet a live record; if
# it ever did, ledger_raise (schema.sql) aborts the statement rather than commit events
# without their record.
RUN_KEYED_COMMAND = f"""
WITH claim AS (
    SELECT c.outcome, c.status_code, c.body
    FROM ledger_claim($22::text, $23::text, $24::bytea, $25::interval, $26::bigint) AS c
), gate AS (
    SELECT outcome = 'claimed' AS open FROM claim
), {_COMMAND_WRITE}, stored AS (
    INSERT INTO idempotency_keys AS k (scope, idempotency_key, request_fingerprint,
                                       status_code, response_body)
    SELECT $22::text, $23::text, $24::bytea, $27::integer,
           ($28::bytea[])[1] || coalesce(
               (SELECT string_agg(convert_to(w.positions[s.slot]::text, 'UTF8')
                                  || ($28::bytea[])[s.n + 1], ''::bytea ORDER BY s.n)
                FROM unnest($29::integer[]) WITH ORDINALITY AS s(slot, n)),
               ''::bytea)
    FROM written w
    ON CONFLICT (scope, idempotency_key) DO UPDATE
    SET request_fingerprint = EXCLUDED.request_fingerprint,
        status_code = EXCLUDED.status_code,
        response_body = EXCLUDED.response_body,
        created_at = now()
    WHERE k.created_at <= now() - $25::interval
    RETURNING true AS stored, k.response_body AS body
)
SELECT c.outcome AS r_outcome, c.status_code AS r_status_code, c.body AS r_body,
       NULL::bigint[] AS r_positions
FROM claim c
WHERE c.outcome <> 'claimed'
UNION ALL
SELECT 'applied', $27::integer, s.body, w.positions
FROM written w LEFT JOIN stored s ON true
WHERE CASE WHEN s.stored THEN true
           ELSE ledger_raise('a live idempotency record appeared under a held lock') END
"""

# GET /lending/applicants/{id}/history, rendered by PostgreSQL: the response's bytes, exactly
# those api/jsonio.py writes for the same rows as `Application` models (compact, the model's
# key order, money as the numeric's own digits, times by ledger_json_time in schema.sql).
# Compact output is why this is concatenation and not json_build_object, which writes
# `"key" : value`. tests/integration/test_properties_db.py holds the two renderings equal.
APPLICATION_JSON = """
'{"application_id":"' || a.application_id::text
|| '","applicant_id":' || to_json(a.applicant_id)::text
|| ',"amount":' || a.amount::text
|| ',"income":' || a.income::text
|| ',"employment_years":' || a.employment_years::text
|| ',"risk_score":' || coalesce(a.risk_score::text, 'null')
|| ',"decision":' || coalesce(to_json(a.decision)::text, 'null')
|| ',"status":' || to_json(a.status)::text
|| ',"scoring_model":' || coalesce(to_json(a.scoring_model || '-' || a.scoring_model_version)::text,
                                   'null')
|| ',"reason_codes":[' || coalesce(
       (SELECT string_agg(to_json(r.code)::text, ',' ORDER BY r.n)
        FROM jsonb_array_elements_text(a.reason_codes) WITH ORDINALITY AS r(code, n)), '')
|| '],"recommended_outcome":' || coalesce(to_json(a.recommended_outcome)::text, 'null')
|| ',"submitted_by":' || to_json(a.submitted_by)::text
|| ',"decided_by":' || coalesce(to_json(a.decided_by)::text, 'null')
|| ',"in_review_since":' || ledger_json_time(a.in_review_since)
|| ',"reviewed_at":' || ledger_json_time(a.reviewed_at)
|| ',"created_at":' || ledger_json_time(a.created_at)
|| ',"updated_at":' || ledger_json_time(a.updated_at)
|| ',"stream_version":' || a.stream_version::text || '}'
"""

SELECT_APPLICANT_HISTORY_JSON = f"""
SELECT convert_to(
    '[' || coalesce(string_agg({APPLICATION_JSON}, ',' ORDER BY a.created_at DESC,
                               a.application_id DESC), '') || ']',
    'UTF8')
FROM (
    SELECT * FROM loan_applications
    WHERE applicant_id = $1
    ORDER BY created_at DESC, application_id DESC
    LIMIT $2
) a
"""
