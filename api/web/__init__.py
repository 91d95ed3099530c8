"""The HTTP service: FastAPI app, server, auth, problem+json, routes, MCP."""
