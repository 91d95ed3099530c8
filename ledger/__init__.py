"""Write side of the lending ledger: events, codec, hash chain, scoring, decisions, store."""
