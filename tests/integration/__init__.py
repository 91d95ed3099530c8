"""Tests against a real PostgreSQL (the session's embedded server): store, projections, API, CLI."""
