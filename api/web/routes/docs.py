"""The API's own description: `/openapi.json` and the interactive `/docs`.

Outside production they need no key (api/service/access.py, DOCUMENT_OPERATIONS); in
production any valid key. `/openapi.json` is the keyed document, or its open-mode variant
while the service runs open (api/web/openapi.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from api.service.access import Authenticator
from api.service.errors import DATABASE_UNAVAILABLE, ServiceUnavailable
from api.service.runtime import LedgerService
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
    return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{request.app.title} - docs")
