"""Tests without a database: pure domain, scoring, Merkle trees, properties, bench arithmetic."""
