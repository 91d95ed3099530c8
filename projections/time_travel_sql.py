"""SQL of the time-travel queries (projections/time_travel.py). Values only as $n."""

from __future__ import annotations

# An applicant's applications that existed at $2, newest first: the same index range scan
# as the present-day history (applicant, created_at DESC, application_id DESC). created_at
# is the recorded time of the application's first event, so it existed at $2 exactly when
# created_at <= $2.
SELECT_APPLICANT_APPLICATIONS_CREATED_BY = """
SELECT application_id FROM loan_applications
WHERE applicant_id = $1 AND created_at <= $2
ORDER BY created_at DESC, application_id DESC
LIMIT $3
"""
