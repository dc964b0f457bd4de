"""`Annotated` dependency aliases: routes declare what they need and FastAPI supplies it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from sqlalchemy.orm import Session

from genqueue.db.models import ApiKey
from genqueue.enums import Role
from genqueue_api.errors import ApiError
from genqueue_api.state import AppState


# Dependencies that never block are coroutines: FastAPI runs a plain function dependency on its thread pool,
# and each such hand-off costs a single submit more CPU than the function itself.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.genqueue
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


# Declared as a security scheme so that the OpenAPI schema says which operations need a key, and (as the
# scheme's scopes, which OpenAPI 3.1 allows to be role names) which roles; current_key does the checking.
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def bearer_secret(header: str | None) -> str:
    """The secret of an ``Authorization: Bearer <key>`` header; 401 when there is none."""
    scheme, _sep, secret = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    return secret.strip()


def unknown_key() -> ApiError:
    return ApiError(401, "unauthorized", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})


def wrong_role(roles: Sequence[str]) -> ApiError:
    return ApiError(403, "forbidden", f"this endpoint needs the {' or '.join(roles)} role")


def current_key(request: Request, state: StateDep,
                _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
    secret = bearer_secret(request.headers.get("authorization"))
    # A short session of its own (when the key is not cached), so that auth never holds a connection for the
    # whole request.
    key = state.keys.lookup(state.db.session, secret, state.settings.auth_cache_s)
    if key is None:
        raise unknown_key()
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


async def role_key(scopes: SecurityScopes, key: CurrentKey) -> ApiKey:
    """The caller's key, when its role is one of the roles (security scopes) the route asks for."""
    if key.role not in scopes.scopes:
        raise wrong_role(scopes.scopes)
    return key


CLIENT_ROLES = [Role.client.value, Role.admin.value]  # who may submit jobs
CurrentClient = Annotated[ApiKey, Security(role_key, scopes=CLIENT_ROLES)]
CurrentModerator = Annotated[ApiKey, Security(role_key, scopes=[Role.moderator.value, Role.admin.value])]
CurrentAdmin = Annotated[ApiKey, Security(role_key, scopes=[Role.admin.value])]
