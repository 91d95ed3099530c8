"""The running service without FastAPI or argparse: runtime, settings, keys, access,
commands that return values, and audit assembly."""
