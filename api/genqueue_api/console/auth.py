"""Who is looking at the console: the session behind the cookie, and its API key read again from SQL on
every request, so that a revoked key (or one whose role changed) loses its console sessions at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request

from genqueue import queue
from genqueue.db.models import ApiKey
from genqueue.enums import Role
from genqueue_api.console.sessions import COOKIE, CSRF_HEADER, ConsoleSession, SessionStore, same
from genqueue_api.deps import StateDep
from genqueue_api.errors import ApiError
from genqueue_api.state import AppState

CONSOLE_ROLES = (Role.moderator.value, Role.admin.value)


@dataclass(frozen=True)
class Viewer:
    token: str
    session: ConsoleSession
    key: ApiKey

    @property
    def is_admin(self) -> bool:
        return self.key.role == Role.admin.value


def unavailable() -> ApiError:
    return ApiError(503, "unavailable", "the console's session store (Redis) cannot be reached; try again shortly")


def sessions(state: AppState) -> SessionStore:
    return SessionStore(queue.shared_redis(state.broker_url), state.settings.console_session_ttl_s)


def page_viewer(request: Request, state: StateDep) -> Viewer | None:
    """The logged-in viewer, or None (the page then asks to log in)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    store = sessions(state)
    try:
        sess = store.get(token)
    except redis.RedisError:
        raise unavailable() from None
    if sess is None:
        return None
    with state.db.session() as s:
        key = s.get(ApiKey, sess.key_id)
    if key is None or key.revoked_at is not None or key.role not in CONSOLE_ROLES:
        store.delete(token)
        return None
    return Viewer(token, sess, key)


PageViewer = Annotated[Viewer | None, Depends(page_viewer)]


def api_viewer(viewer: PageViewer) -> Viewer:
    if viewer is None:
        raise ApiError(401, "session_expired", "your console session has ended: log in again")
    return viewer


ApiViewer = Annotated[Viewer, Depends(api_viewer)]


def csrf_viewer(request: Request, viewer: ApiViewer) -> Viewer:
    """A viewer whose request carries the session's CSRF token (every request that changes something)."""
    if not same(request.headers.get(CSRF_HEADER), viewer.session.csrf):
        raise ApiError(403, "csrf_failed", "the request's CSRF token is missing or wrong: reload the console")
    return viewer


CsrfViewer = Annotated[Viewer, Depends(csrf_viewer)]
