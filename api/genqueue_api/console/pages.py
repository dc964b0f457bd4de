"""The console's pages: log in, the queue, log out. HTML only; the work is in console.service."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from genqueue_api import auth as keys
from genqueue_api.console import service, web
from genqueue_api.console.auth import CONSOLE_ROLES, PageViewer, sessions
from genqueue_api.console.sessions import COOKIE, COOKIE_PATH, CSRF_FIELD, LOGIN_COOKIE, new_token, same
from genqueue_api.deps import SessionDep, StateDep

router = APIRouter(prefix="/console", include_in_schema=False)

PAGE_SIZES = (5, 10, 20)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    token = new_token()
    response = web.render(request, "login.html", {"csrf": token, "error": error}, status_code)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path=COOKIE_PATH,
                        secure=_secure(request), max_age=3600)
    return response


def _forbidden(request: Request) -> Response:
    return web.render(request, "error.html", {
        "title": "Request refused",
        "message": "This form's security token is missing or wrong (CSRF check), so nothing was changed. "
                   "Go back to the console and try again."}, status_code=403)


@router.get("")
def console(request: Request, state: StateDep, session: SessionDep, viewer: PageViewer) -> Response:
    if viewer is None:
        return RedirectResponse("/console/login", status_code=303)
    held = service.held(session, viewer.key)
    return web.render(request, "console.html", {
        "viewer": viewer, "csrf": viewer.session.csrf, "items": held,
        "counters": service.counters(session, viewer.key), "reasons": service.recent_reasons(session, viewer.key),
        "models": state.registry.names(), "page_sizes": PAGE_SIZES})


@router.get("/login")
def login_page(request: Request, viewer: PageViewer) -> Response:
    if viewer is not None:
        return RedirectResponse("/console", status_code=303)
    return _login_page(request)


@router.post("/login")
def login(request: Request, state: StateDep, session: SessionDep, key: Annotated[str, Form(max_length=500)] = "",
          csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)] = "") -> Response:
    if not same(csrf_token, request.cookies.get(LOGIN_COOKIE)):
        return _login_page(request, "The login form had expired (its security token did not match). "
                                    "Enter your key again.", 403)
    secret = key.strip()
    if not secret:
        return _login_page(request, "Enter your API key.", 422)
    found = keys.lookup(session, secret)
    if found is None:
        return _login_page(request, "That key is not valid, or it has been revoked. Check it with the person "
                                    "who gave it to you.", 401)
    if found.role not in CONSOLE_ROLES:
        return _login_page(request, f"This is a {found.role} key. The console needs a moderator or admin key.", 403)
    try:
        token, _ = sessions(state).create(found)
    except redis.RedisError:
        return _login_page(request, "The console cannot reach its session store (Redis). Try again shortly.", 503)
    response = RedirectResponse("/console", status_code=303)
    # A browser-session cookie: how long the session lasts is the server's business (a sliding expiry in
    # Redis), and closing the browser ends it here too.
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path=COOKIE_PATH, secure=_secure(request))
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/logout")
def logout(request: Request, state: StateDep, viewer: PageViewer,
           csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)] = "") -> Response:
    if viewer is not None:
        if not same(csrf_token, viewer.session.csrf):
            return _forbidden(request)
        sessions(state).delete(viewer.token)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response
