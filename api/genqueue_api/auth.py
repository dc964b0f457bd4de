"""API keys: only a SHA-256 of each secret is stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import select
from sqlalchemy.orm import Session

from genqueue.db.models import ApiKey
from genqueue.enums import Role

KEY_PREFIX = "gq_"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, name: str, role: Role, trusted: bool = False,
               review_policy: str | None = None) -> tuple[ApiKey, str]:
    """``review_policy`` (all | flagged | none) is what review="auto" means for this key's jobs."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=str(uuid.uuid4()), name=name, role=role.value, prefix=secret[:10], key_hash=hash_key(secret), trusted=trusted,
        review_policy=review_policy,
    )
    session.add(key)
    session.commit()
    return key, secret


def lookup(session: Session, secret: str) -> ApiKey | None:
    key = session.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(secret))).scalar_one_or_none()
    if key is None or key.revoked_at is not None:
        return None
    return key


class KeyCache:
    """Keys verified in the last ``ttl_s`` seconds, by the hash of their secret. Only keys that were found
    and not revoked are kept, so a new key works at once and a wrong one is looked up every time; a key
    revoked in SQL is refused once its entry is ``ttl_s`` old. The cached rows are detached: read-only."""

    MAX_KEYS = 10_000  # an API with more live keys than this looks the rest up as before

    def __init__(self) -> None:
        self._keys: dict[str, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()

    def lookup(self, open_session: Callable[[], AbstractContextManager[Session]], secret: str,
               ttl_s: float) -> ApiKey | None:
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._keys.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with open_session() as session:
            key = lookup(session, secret)
        if key is None:
            self._keys.pop(digest, None)
            return None
        if ttl_s > 0:
            with self._lock:
                if len(self._keys) >= self.MAX_KEYS:
                    self._keys = {d: v for d, v in self._keys.items() if v[1] > now}
                if len(self._keys) < self.MAX_KEYS:
                    self._keys[digest] = (key, now + ttl_s)
        return key
