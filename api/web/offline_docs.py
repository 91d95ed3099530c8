"""Swagger UI and ReDoc pages whose assets are files shipped in this package (the console's
static/vendor/, see its README.md): no CDN, so both work offline. Used by
api/web/routes/docs.py, which authorises them like every route."""

from __future__ import annotations

from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

# Where the console mounts its static files (api/web/console/base.py STATIC_URL).
VENDOR_URL = "/console/static/vendor"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"


def swagger_ui_page(root: str, openapi_url: str, title: str) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=root + openapi_url,
        title=title,
        swagger_js_url=f"{root}{VENDOR_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{VENDOR_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{VENDOR_URL}/favicon-32x32.png",
        oauth2_redirect_url=root + OAUTH2_REDIRECT,
        # No validator badge: it would send the document to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


def oauth2_redirect_page() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


def redoc_page(root: str, openapi_url: str, title: str) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=root + openapi_url,
        title=title,
        redoc_js_url=f"{root}{VENDOR_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{VENDOR_URL}/favicon-32x32.png",
        with_google_fonts=False,
    )
