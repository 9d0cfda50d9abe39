"""GET /: the web page (static HTML, CSS and a little JS, no build step, no external request), and its files under
/static. It calls the public API only: /predict?explain=true and /explain."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["page"])


@router.get("/", summary="the web page", response_class=FileResponse, include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
