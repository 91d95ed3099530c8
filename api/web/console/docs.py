"""/docs (Swagger UI) and /redoc from files shipped in this package: no CDN, so both work
offline. The vendored files are in static/vendor/ (see static/vendor/README.md)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

from api.web.console.base import STATIC_URL

VENDOR = f"{STATIC_URL}/vendor"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"


def add_offline_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc like FastAPI does (plain routes, outside the OpenAPI document
    and the role table), with local assets. Create the app with docs_url=redoc_url=None."""
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{VENDOR}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{VENDOR}/swagger-ui.css",
            swagger_favicon_url=f"{root}{VENDOR}/favicon-32x32.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT,
            # No validator badge: it would send the document to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def swagger_ui_redirect(request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{VENDOR}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{VENDOR}/favicon-32x32.png",
            with_google_fonts=False,
        )

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route(OAUTH2_REDIRECT, swagger_ui_redirect, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
