"""Console sessions, kept on the server: the browser holds only a random token in an HttpOnly, SameSite
cookie, never the API key. Redis keeps each session under a hash of its token (so a copy of Redis does not
hand out live sessions) with a sliding expiry; logging out deletes it, which ends it in every API process.

CSRF: each session has a random token of its own that every state-changing request must carry (a form
field, or the ``X-CSRF-Token`` header from the page's JavaScript). The login form, which has no session
yet, uses a double-submit token: a cookie and a form field that must match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass

import redis

from genqueue.db.models import ApiKey

COOKIE = "gq_console"
LOGIN_COOKIE = "gq_console_login"
COOKIE_PATH = "/console"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_PREFIX = "genqueue:console:session:"


@dataclass(frozen=True)
class ConsoleSession:
    key_id: str
    name: str
    role: str
    csrf: str
    created_at: float


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens; a missing one never matches."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def _name(token: str) -> str:
    return _PREFIX + hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    def create(self, key: ApiKey) -> tuple[str, ConsoleSession]:
        token = new_token()
        sess = ConsoleSession(key_id=key.id, name=key.name, role=key.role, csrf=new_token(), created_at=time.time())
        self.client.set(_name(token), json.dumps(asdict(sess)), ex=self.ttl_s)
        return token, sess

    def get(self, token: str | None) -> ConsoleSession | None:
        """The live session of ``token``, its expiry pushed back by another TTL (sliding)."""
        if not token or len(token) > 200:
            return None
        raw = self.client.getex(_name(token), ex=self.ttl_s)
        if raw is None:
            return None
        return ConsoleSession(**json.loads(raw))

    def delete(self, token: str | None) -> None:
        if token and len(token) <= 200:
            self.client.delete(_name(token))
