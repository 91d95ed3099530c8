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

# One command's whole write in one statement: the `ledger_command` function of schema.sql
# (idempotency claim, events, the rows below, the stored response). See projections/inline.py.
RUN_COMMAND = """
SELECT r_outcome, r_status_code, r_body, r_positions
FROM ledger_command($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32,
                    $33, $34, $35, $36, $37, $38)
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
