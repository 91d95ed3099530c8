"""The running service without FastAPI or the command line's libraries (typer, rich):
runtime, settings, keys, access, commands that return values, and audit assembly."""
