"""What one API process holds: settings, the database, the model registry and the broker connection."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Celery

from genqueue.db.session import Database
from genqueue.events import FinishedListener
from genqueue.publisher import Publisher
from genqueue.registry import ModelEntry, Registry
from genqueue.settings import Settings
from genqueue_api.auth import KeyCache
from genqueue_api.store.job_inserts import JobInserter

if TYPE_CHECKING:
    from genqueue_api.quotas import SingleAdmits


@dataclass
class AppState:
    settings: Settings
    db: Database
    registry: Registry
    celery: Celery
    broker_url: str
    publisher: Publisher  # chunks committed job ids into broker messages (coalescing single submits)
    listener: FinishedListener | None = None  # started with the app; wakes `Prefer: wait` requests
    # Set when the server begins a graceful shutdown: held `Prefer: wait` requests answer with the job as it
    # stands (within one 5 s wait slice), before the server's graceful timeout would cancel them with a 500.
    stopping: bool = False
    keys: KeyCache = field(default_factory=KeyCache)  # API keys verified in the last auth_cache_s seconds
    _tokenizers: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _inserter: JobInserter | None = None
    _admits: SingleAdmits | None = None

    def single_admits(self) -> SingleAdmits:
        """The grouped quota charges of single submits (quotas.SingleAdmits), started on first use."""
        from genqueue_api.quotas import SingleAdmits  # noqa: F811 (quotas imports this module)

        with self._lock:
            if self._admits is None:
                self._admits = SingleAdmits(self)
            return self._admits

    def job_inserter(self) -> JobInserter:
        """The group committer of single submits' rows, started on first use."""
        with self._lock:
            if self._inserter is None:
                self._inserter = JobInserter(self.db)
            return self._inserter

    def close(self) -> None:
        """Stop the threads this state started (the publisher is closed by the app, after its reconciler)."""
        with self._lock:
            if self._inserter is not None:
                self._inserter.close()
                self._inserter = None
            if self._admits is not None:
                self._admits.close()
                self._admits = None

    def tokenizer(self, entry: ModelEntry) -> Any:
        """Tokenizers are loaded lazily, once per model version, to check prompt lengths at submit."""
        from tokenizers import Tokenizer

        with self._lock:
            tok = self._tokenizers.get(entry.ref)
            if tok is None:
                assert entry.tokenizer_path is not None
                tok = Tokenizer.from_file(str(entry.tokenizer_path))
                self._tokenizers[entry.ref] = tok
            return tok
