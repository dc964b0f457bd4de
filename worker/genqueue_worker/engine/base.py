"""What the text and image engines share: the loop thread's life cycle and the provider report."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


def stop_all(engines: Iterable[Any], drain: bool = True, timeout: float = 30.0) -> None:
    """``stop`` every engine at once: each may take up to ``timeout`` to drain, and one after another they
    would take that many times as long."""
    threads = [threading.Thread(target=e.stop, args=(drain, timeout), name="engine-stop") for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class EngineThread:
    """Mixin: ``start`` warms the runner up and runs ``_loop`` on a dedicated daemon thread."""

    kind = "engine"  # thread-name prefix
    name: str
    runner: Any
    _thread: threading.Thread | None

    @property
    def provider(self) -> str:
        """The execution provider that actually runs (read from the session, after any silent fallback)."""
        return str(self.runner.provider)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._warmup()
        self._thread = threading.Thread(target=self._loop, name=f"{self.kind}-engine-{self.name}", daemon=True)
        self._thread.start()

    def _warmup(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        raise NotImplementedError
