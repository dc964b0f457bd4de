"""API keys: only a SHA-256 of each secret is stored; the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets
import uuid

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
