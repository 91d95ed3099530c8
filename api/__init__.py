"""HTTP service, CLI and Python client of the lending ledger."""
