"""The moderators' web console at /console: server-rendered pages (Jinja2) with a small script, on a
server-side cookie session. It goes through the same review service as the HTTP API."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install(app: FastAPI) -> None:
    from genqueue_api.console import api, pages, web

    app.include_router(pages.router)
    app.include_router(api.router)
    app.mount("/console/static", StaticFiles(directory=str(web.STATIC)), name="console-static")
