"""Standard Webhooks signatures (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), through the
`standardwebhooks` package. The secret is GENQUEUE_WEBHOOK_SECRET: a ``whsec_<base64>`` value is the
standard's format; any other value is taken as raw bytes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook


def webhook(secret: str) -> Webhook:
    if secret.startswith("whsec_"):
        return Webhook(secret)
    return Webhook(secret.encode("utf-8"))


def headers(secret: str, msg_id: str, body: str, at: dt.datetime) -> dict[str, str]:
    """The three signature headers for ``body`` (the exact bytes sent, as text)."""
    signature = webhook(secret).sign(msg_id, at, body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def verify(payload: bytes | str, headers: Mapping[str, str], secret: str) -> Any:
    """The parsed payload; raises standardwebhooks' WebhookVerificationError when the signature is wrong,
    a header is missing, or the timestamp is more than five minutes off."""
    return webhook(secret).verify(payload, dict(headers))
