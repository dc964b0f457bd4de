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

from genqueue.db.models import ApiKey, utcnow
from genqueue.enums import Role
from genqueue.schemas import storable

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


class KeyNotFound(LookupError):
    """No key, or more than one, answers to a reference; the message says which."""


def list_keys(session: Session, include_revoked: bool = False) -> list[ApiKey]:
    q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        q = q.where(ApiKey.revoked_at.is_(None))
    return list(session.execute(q).scalars())


def find_key(session: Session, ref: str) -> ApiKey:
    """The key that ``ref`` names, tried in this order: its id, the first 10 characters of its secret (the
    prefix `genqueue keys list` shows), its name. A name several keys share means the one still live; when
    none is, the newest (so that revoking it again says it already is)."""
    if not storable(ref):  # NUL or a lone surrogate: no key holds it, and PostgreSQL would refuse the query
        raise KeyNotFound(f"no key matches {ref!r}")
    key = session.get(ApiKey, ref)
    if key is not None:
        return key
    for column in (ApiKey.prefix, ApiKey.name):
        found = list(session.execute(select(ApiKey).where(column == ref).order_by(ApiKey.created_at)).scalars())
        if len(found) > 1:
            live = [k for k in found if k.revoked_at is None]
            found = live or found[-1:]
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(k.id for k in found)
            raise KeyNotFound(f"{len(found)} live keys match {ref!r} ({ids}); name one by its id")
    raise KeyNotFound(f"no key matches {ref!r} (give its id, the first 10 characters of its secret, or its name)")


def revoke_key(session: Session, ref: str) -> tuple[ApiKey, bool]:
    """Revoke the key ``ref`` names (see :func:`find_key`); commits. Returns the key and whether it was
    already revoked (then nothing changes)."""
    key = find_key(session, ref)
    if key.revoked_at is not None:
        return key, True
    key.revoked_at = utcnow()
    session.commit()
    return key, False


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

    def cached(self, secret: str) -> ApiKey | None:
        """The key, when it was verified less than its time to live ago; None means "look it up"."""
        hit = self._keys.get(hash_key(secret))
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

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
