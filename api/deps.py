"""`Annotated` dependency aliases: routes declare what they need and FastAPI supplies it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from genqueue.db.models import ApiKey
from genqueue.enums import Role
from genqueue_api import auth
from genqueue_api.errors import ApiError
from genqueue_api.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.genqueue
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_key(request: Request, state: StateDep) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    # A short session of its own, so that auth never holds a connection for the whole request.
    with state.db.session() as session:
        key = auth.lookup(session, secret.strip())
    if key is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def _require(*roles: Role):  # type: ignore[no-untyped-def]
    def dep(key: CurrentKey) -> ApiKey:
        if key.role not in {r.value for r in roles}:
            raise ApiError(403, "forbidden", f"this endpoint needs the {' or '.join(r.value for r in roles)} role")
        return key

    return dep


CurrentClient = Annotated[ApiKey, Depends(_require(Role.client, Role.admin))]
CurrentModerator = Annotated[ApiKey, Depends(_require(Role.moderator, Role.admin))]
CurrentAdmin = Annotated[ApiKey, Depends(_require(Role.admin))]
