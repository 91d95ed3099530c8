"""The API's own description: `/openapi.json`, and the interactive `/docs` and `/redoc`
(served offline, api/web/offline_docs.py).

Outside production they need no key (api/service/access.py, DOCUMENT_OPERATIONS); in
production any valid key. `/openapi.json` is the keyed document, or its open-mode variant
while the service runs open (api/web/openapi.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.service.access import Authenticator
from api.service.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.service.runtime import LedgerService
from api.web.offline_docs import (
    OAUTH2_REDIRECT,
    oauth2_redirect_page,
    redoc_page,
    swagger_ui_page,
)
from api.web.openapi import open_mode_variant
from api.web.responses import JSONResponse

router = APIRouter()

OPENAPI_PATH = "/openapi.json"


async def _running_open(request: Request) -> bool:
    authenticator: Authenticator = request.app.state.authenticator
    service: LedgerService = request.app.state.service
    try:
        return await authenticator.is_open(lambda: service.pool)
    except (ServiceUnavailable, *DATABASE_UNAVAILABLE):
        return False  # cannot tell yet: the keyed document, the stricter one


@router.get(OPENAPI_PATH, operation_id="get_openapi", include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    document = request.app.openapi()
    if await _running_open(request):
        state = request.app.state
        if getattr(state, "open_mode_openapi", None) is None:
            state.open_mode_openapi = open_mode_variant(document)
        document = state.open_mode_openapi
    return JSONResponse(document)


@router.get("/docs", operation_id="get_api_docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return swagger_ui_page(root, OPENAPI_PATH, f"{request.app.title} - Swagger UI")


@router.get(OAUTH2_REDIRECT, operation_id="get_api_docs_redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    return oauth2_redirect_page()


@router.get("/redoc", operation_id="get_api_redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return redoc_page(root, OPENAPI_PATH, f"{request.app.title} - ReDoc")
