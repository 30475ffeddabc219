"""``GET /``: the chat page (web/index.html), which talks to /v1/chat/completions."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

WEB_PAGE = Path(__file__).resolve().parent.parent / "web" / "index.html"


@router.get("/", include_in_schema=False)
async def index():
    return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})
