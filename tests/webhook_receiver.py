"""A real HTTP server that records the webhooks it receives; it can answer the first N requests with 500."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the secret the test stacks sign with

@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    fail_first: int = 0
    got: list[Received] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    code = 500 if len(receiver.answered) < receiver.fail_first else 204
                    receiver.answered.append(code)
                    if code == 204:
                        receiver.got.append(Received(body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, pred: Any, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                hits = [r for r in self.got if pred(r)]
            if hits:
                return hits
            time.sleep(0.05)
        raise TimeoutError("the webhook did not arrive")
