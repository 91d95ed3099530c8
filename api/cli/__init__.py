"""The lending-ledger command line."""
