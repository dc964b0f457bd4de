"""The SDK's errors: every API answer over 400 becomes a GenqueueError in the API's error shape."""

from __future__ import annotations

from typing import Any


class GenqueueError(Exception):
    """An API error, in the API's error shape (docs/api.md, "Errors"). ``retry_after`` is the server's
    Retry-After in seconds when it sent one (429, 503)."""

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.retry_after = retry_after


class GenqueueConnectionError(GenqueueError):
    """The API could not be reached (or kept failing) after every retry."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)
