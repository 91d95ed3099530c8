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

SET_WORK_MEM = "SELECT set_config('work_mem', $1, true)"

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

_UUID = "'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'"
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
        "application_id": f"({text} ~ {_UUID})",
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


# $1, $2: the window (seq after, through); $3: the stream prefix. The applications' stream
# ids are the prefix and the lowercase uuid; ApplicationSubmitted is version 1 and only
# version 1, and carries the stream's own id; a stream that begins before the window has
# its row already.
APPLICATIONS_LEFT_TO_PYTHON = f"""
SELECT coalesce(array_agg(t.stream_id), '{{}}')
FROM (
    SELECT e.stream_id, min(e.stream_version) AS first_version,
           bool_and(
               CASE WHEN substr(e.stream_id, length($3) + 1) ~ {_UUID}
                         AND (e.event_type = 'ApplicationSubmitted') = (e.stream_version = 1)
                    THEN ({_event_checks()})
                         AND (e.event_type <> 'ApplicationSubmitted'
                              OR e.data->>'application_id' = substr(e.stream_id, length($3) + 1))
                    ELSE false END
           ) AS foldable
    FROM public.ledger_log l JOIN public.events e ON e.position = l.position
    WHERE l.seq > $1 AND l.seq <= $2 AND starts_with(e.stream_id, $3)
    GROUP BY e.stream_id
) t
WHERE NOT t.foldable
   OR (t.first_version > 1 AND NOT EXISTS (
           SELECT 1 FROM loan_applications p
           WHERE p.application_id = substr(t.stream_id, length($3) + 1)::uuid))
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

# $1, $2: the window; $3: the stream prefix; $4: the streams left to the Python fold.
# One statement: the history rows (a data-modifying CTE) and the application rows.
FOLD_APPLICATIONS_WINDOW = f"""
WITH src AS MATERIALIZED (
    SELECT e.stream_id, e.stream_version, e.position, e.event_type, e.schema_version, e.data,
           e.recorded_at, substr(e.stream_id, length($3) + 1)::uuid AS key,
           CASE e.event_type
               WHEN 'ApplicationSubmitted' THEN 'submitted'
               WHEN 'ApplicationScored' THEN 'scored'
               WHEN 'ApplicationDecided' THEN
                   CASE e.data->>'decision' WHEN 'approved' THEN 'approved' ELSE 'in_review' END
               WHEN 'ManualReviewRequested' THEN 'in_review'
               WHEN 'ApplicationReviewed' THEN e.data->>'outcome'
               WHEN 'ApplicationWithdrawn' THEN 'withdrawn'
           END AS sets_status
    FROM public.ledger_log l JOIN public.events e ON e.position = l.position
    WHERE l.seq > $1 AND l.seq <= $2 AND starts_with(e.stream_id, $3)
      AND e.stream_id <> ALL ($4::text[])
),
prior AS MATERIALIZED (
    SELECT p.*
    FROM loan_applications p
    WHERE p.application_id IN (
        SELECT s.key FROM src s GROUP BY s.key HAVING min(s.stream_version) > 1)
),
folded AS MATERIALIZED (
    SELECT s.*, pr.status AS prior_status,
           array_agg(s.sets_status) FILTER (WHERE s.sets_status IS NOT NULL) OVER upto
               AS set_through,
           array_agg(s.sets_status) FILTER (WHERE s.sets_status IS NOT NULL) OVER before
               AS set_before
    FROM src s LEFT JOIN prior pr ON pr.application_id = s.key
    WINDOW upto AS (PARTITION BY s.stream_id ORDER BY s.stream_version
                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
           before AS (PARTITION BY s.stream_id ORDER BY s.stream_version
                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
steps AS MATERIALIZED (
    SELECT f.*,
           coalesce(f.set_through[cardinality(f.set_through)], f.prior_status) AS status,
           coalesce(f.set_before[cardinality(f.set_before)], f.prior_status) AS status_before
    FROM folded f
),
history AS (
    INSERT INTO application_history (application_id, stream_version, event_position,
                                     event_type, status, details, recorded_at)
    SELECT f.key, f.stream_version, f.position, f.event_type, f.status, {_HISTORY_DETAILS},
           f.recorded_at
    FROM steps f
),
per_stream AS (
    SELECT f.key, max(f.stream_version) AS version,
           array_agg(f.data ORDER BY f.stream_version)
               FILTER (WHERE f.event_type = 'ApplicationSubmitted') AS submitted,
           array_agg(f.schema_version ORDER BY f.stream_version)
               FILTER (WHERE f.event_type = 'ApplicationSubmitted') AS submitted_version,
           array_agg(f.recorded_at ORDER BY f.stream_version)
               FILTER (WHERE f.event_type = 'ApplicationSubmitted') AS submitted_at,
           array_agg(f.data ORDER BY f.stream_version)
               FILTER (WHERE f.event_type = 'ApplicationScored') AS scored,
           array_agg(CASE WHEN f.schema_version = 1 THEN 'null'::jsonb
                          ELSE f.data->'recommended_outcome' END ORDER BY f.stream_version)
               FILTER (WHERE f.event_type = 'ApplicationDecided') AS recommended,
           array_agg(CASE f.event_type
                         WHEN 'ApplicationDecided' THEN f.data->>'decision'
                         WHEN 'ManualReviewRequested' THEN 'review'
                         ELSE f.data->>'outcome' END ORDER BY f.stream_version)
               FILTER (WHERE f.event_type IN ('ApplicationDecided', 'ManualReviewRequested',
                                              'ApplicationReviewed')) AS decisions,
           array_agg(CASE f.event_type WHEN 'ApplicationDecided' THEN f.data->>'decided_by'
                                       ELSE f.data->>'reviewer' END ORDER BY f.stream_version)
               FILTER (WHERE f.event_type IN ('ApplicationDecided', 'ApplicationReviewed'))
               AS deciders,
           array_agg(f.recorded_at ORDER BY f.stream_version)
               FILTER (WHERE f.status = 'in_review'
                         AND f.status_before IS DISTINCT FROM 'in_review') AS entered_review,
           array_agg(f.recorded_at ORDER BY f.stream_version)
               FILTER (WHERE f.event_type = 'ApplicationReviewed') AS reviews,
           array_agg(f.status ORDER BY f.stream_version) AS statuses,
           array_agg(f.recorded_at ORDER BY f.stream_version) AS times,
           array_agg(f.position ORDER BY f.stream_version) AS positions
    FROM steps f
    GROUP BY f.key
),
tails AS (
    SELECT a.key, a.version,
           a.submitted[1] AS sub, a.submitted_version[1] AS sub_version,
           a.submitted_at[1] AS sub_at,
           a.scored[cardinality(a.scored)] AS scored,
           cardinality(a.recommended) AS decided_events,
           a.recommended[cardinality(a.recommended)] AS recommended,
           cardinality(a.decisions) AS decision_events,
           a.decisions[cardinality(a.decisions)] AS decision,
           cardinality(a.deciders) AS decider_events,
           a.deciders[cardinality(a.deciders)] AS decided_by,
           a.entered_review[cardinality(a.entered_review)] AS entered_review,
           a.reviews[cardinality(a.reviews)] AS reviewed_at,
           a.statuses[cardinality(a.statuses)] AS status,
           a.times[cardinality(a.times)] AS updated_at,
           a.positions[cardinality(a.positions)] AS last_position
    FROM per_stream a
)
INSERT INTO loan_applications ({APPLICATION_COLUMNS})
SELECT t.key,
       coalesce(t.sub->>'applicant_id', p.applicant_id),
       coalesce((t.sub->>'amount')::numeric, p.amount),
       coalesce((t.sub->>'income')::numeric, p.income),
       coalesce((t.sub->>'employment_years')::integer, p.employment_years),
       CASE WHEN t.scored IS NULL THEN p.risk_score
            ELSE (t.scored->>'risk_score')::numeric END,
       CASE WHEN t.decision_events IS NULL THEN p.decision ELSE t.decision END,
       t.status,
       CASE WHEN t.scored IS NULL THEN p.scoring_model ELSE t.scored->>'model_name' END,
       CASE WHEN t.scored IS NULL THEN p.scoring_model_version
            ELSE t.scored->>'model_version' END,
       coalesce(t.sub_at, p.created_at),
       t.updated_at,
       t.version,
       t.last_position,
       CASE WHEN t.sub IS NULL THEN p.submitted_by
            WHEN t.sub_version = 1 THEN 'unknown'
            ELSE t.sub->>'submitted_by' END,
       CASE WHEN t.decider_events IS NULL THEN p.decided_by ELSE t.decided_by END,
       CASE WHEN t.decided_events IS NULL THEN p.recommended_outcome
            ELSE t.recommended #>> '{{}}' END,
       CASE WHEN t.scored IS NULL THEN coalesce(p.reason_codes, '[]'::jsonb)
            ELSE t.scored->'reason_codes' END,
       coalesce(t.entered_review, p.in_review_since),
       coalesce(t.reviewed_at, p.reviewed_at)
FROM tails t LEFT JOIN prior p ON p.application_id = t.key
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

# The events of the streams left to the Python fold, in log order.
SELECT_LOG_WINDOW_OF_STREAMS = """
SELECT e.position, l.seq, e.stream_id, e.stream_version, e.event_id, e.event_type,
       e.schema_version, e.data, e.metadata, e.recorded_at, e.prev_hash, e.hash
FROM public.ledger_log l JOIN public.events e ON e.position = l.position
WHERE l.seq > $1 AND l.seq <= $2 AND e.stream_id = ANY ($3::text[])
ORDER BY l.seq
"""
