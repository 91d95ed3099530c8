"""The web console for people (issue #15): server-rendered pages under /console, signed in
with an API key exchanged for a session cookie, on the same service layer and role table as
the API. `router` holds every page; `static_files()` serves the package's own CSS, scripts
and vendored Swagger UI / ReDoc, which api/web/routes/docs.py serves at /docs and /redoc.
See docs/console.md."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.staticfiles import StaticFiles

from api.web.console import ledger, operations, reviews, seals, signin
from api.web.console.base import STATIC_DIR, STATIC_URL

router = APIRouter()
for _pages in (signin, reviews, ledger, seals, operations):
    router.include_router(_pages.router)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


__all__ = ["STATIC_URL", "router", "static_files"]
