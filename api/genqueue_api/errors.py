"""The one error shape of the API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "expired",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def validation_details(errors: list[Any], strip_body: bool = True) -> list[dict[str, Any]]:
    details = []
    for e in errors:
        loc = list(e.get("loc", ()))
        if strip_body and loc and loc[0] == "body":
            loc = loc[1:]
        details.append({"field": ".".join(str(p) for p in loc), "message": e.get("msg", ""), "type": e.get("type", "")})
    return details


# The OpenAI-compatible routes answer errors in OpenAI's shape too (type and param beside genqueue's code,
# message and details), as the official client reads them; this covers what FastAPI refuses before a route runs.
_OPENAI_PREFIXES = ("/v1/files", "/v1/batches", "/v1/completions")


def _openai_fields(request: Request, body: dict[str, Any], param: str | None) -> dict[str, Any]:
    if request.url.path.startswith(_OPENAI_PREFIXES):
        body["error"].update(type="invalid_request_error", param=param)
    return body


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = exc.body()
        if "type" not in body["error"]:  # an OpenAIError has its own; a shared check (auth, quotas) does not
            body = _openai_fields(request, body, None)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            body = error_body("invalid_json", "the request body is not valid JSON")
            return JSONResponse(_openai_fields(request, body, None), status_code=400)
        details = validation_details(errors)
        fields = ", ".join(d["field"] or "body" for d in details)
        body = error_body("validation_error", f"invalid request: {fields}", details)
        return JSONResponse(_openai_fields(request, body, details[0]["field"] if details else None), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            _openai_fields(request, error_body(code, str(exc.detail)), None), status_code=exc.status_code,
            headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal_error", "the server failed to handle this request"), status_code=500)


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over the limit, whether or not Content-Length is sent. Paths in
    ``larger`` (uploads, read as they arrive) have limits of their own."""

    def __init__(self, app: Any, max_bytes: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_max = max_bytes
        self.larger = larger or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.larger.get(scope.get("path", ""), self.default_max)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
                await self._reject(send, max_bytes)
                return
        received = 0
        too_large = False

        async def limited_receive() -> Any:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send, max_bytes)

    async def _reject(self, send: Any, max_bytes: int) -> None:
        import json

        body = json.dumps(
            error_body("payload_too_large", f"the request body is larger than {max_bytes} bytes")
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
