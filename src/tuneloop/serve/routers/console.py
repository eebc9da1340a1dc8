"""GET /console: the web console, static files shipped in the package (no build step, no CDN).

The page itself holds no data: it asks for an API key with the `admin` scope, keeps it in the tab's
sessionStorage and sends it as a Bearer header to the admin API, the same routes the CLI uses. A strict
Content-Security-Policy (scripts and styles from this server only, no inline script) backs up the
rule that the scripts render every piece of user text with textContent.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from tuneloop.serve.errors import APIError
from tuneloop.serve.routers import admin_feedback, admin_loop, admin_metrics, admin_registry

router = APIRouter(tags=["console"], include_in_schema=False)
STATIC = Path(str(files("tuneloop.serve") / "console" / "static"))
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def console_routers() -> list[APIRouter]:
    """The console's pages and the admin routes it calls (each its own module), for `create_app`."""
    return [m.router for m in (admin_registry, admin_metrics, admin_loop, admin_feedback)] + [router]


def _file(name: str) -> FileResponse:
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in TYPES or not path.is_file():
        raise APIError(404, "no such console file", "not_found")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)


@router.get("/console")
def console() -> FileResponse:
    return _file("index.html")


@router.get("/console/")
def console_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


@router.get("/console/static/{name}")
def static(name: str) -> FileResponse:
    return _file(name)
