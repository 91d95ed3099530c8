"""Tests that start processes or inject faults: the service under SIGKILL, database
restarts, other PostgreSQL versions."""
