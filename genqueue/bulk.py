"""`genqueue bulk FILE.jsonl --out results.jsonl`: submit a file of job requests in chunks (POST
/v1/jobs/bulk, a few requests in flight), follow the jobs (POST /v1/jobs/lookup, oldest first) and write each
result as soon as its job ends, with a progress bar. A rerun after an interrupt resumes (genqueue.bulkfiles).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genqueue.bulkfiles import Appender, Input, Line, load_progress, result_record
from genqueue.sdk import Client, _core

LOOKUP_MAX = 1000  # ids per POST /v1/jobs/lookup
MAX_CHUNK = 1000  # items per POST /v1/jobs/bulk


@dataclass
class Options:
    # Items per bulk request: a multiple of the default batch sizes (64 images, 32 text rows), so that the API
    # cuts each request into full broker messages and the worker never gets a short one mid-backlog.
    chunk: int = 512
    concurrency: int = 4  # bulk requests in flight
    wait: bool = True  # follow the jobs and write their results
    poll_s: float = 0.5  # between two look-ups while nothing new ended
    timeout_s: float | None = None  # stop following after this long (a rerun continues)
    progress: bool = True


@dataclass
class Summary:
    lines: int = 0
    resumed: int = 0  # lines an earlier run had already finished
    submitted: int = 0  # jobs accepted in this run (replays of earlier runs' included)
    succeeded: int = 0  # all lines so far, earlier runs' included
    failed: int = 0  # failed or canceled jobs, and lines refused at submit (earlier runs' included)
    unfinished: int = 0  # jobs still queued or running when it stopped (a rerun waits for them)
    submit_s: float = 0.0  # from the start until the last line was accepted
    elapsed_s: float = 0.0

    @property
    def jobs_per_s(self) -> float:
        return self.submitted / self.submit_s if self.submit_s > 0 else 0.0


class Bulk:
    def __init__(self, client: Client, inp: Input, out: Path | None, journal: Path, opts: Options) -> None:
        if not 1 <= opts.chunk <= MAX_CHUNK:
            raise ValueError(f"--chunk must be between 1 and {MAX_CHUNK}")
        if opts.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        self.client, self.inp, self.opts = client, inp, opts
        self.out = out if opts.wait else None
        self.journal_path = journal
        done = load_progress(inp, journal, self.out)
        # Succeeded and failed count the whole file, earlier runs included.
        self.summary = Summary(lines=len(inp.lines) + len(inp.invalid), resumed=len(done.finished),
                               succeeded=len(done.finished) - done.failed, failed=done.failed)
        self.pending: deque[Line] = deque(
            ln for ln in inp.lines if ln.number not in done.submitted and ln.number not in done.finished)
        # Jobs submitted and not yet written, oldest first: they end roughly in that order.
        self.outstanding: OrderedDict[str, int] = OrderedDict(
            (job_id, n) for n, job_id in sorted(done.submitted.items()) if n not in done.finished)
        self.deferred: list[tuple[float, Line]] = []  # items the key's in-flight quota held back
        self.finished = done.finished
        self.bar: Any = None
        self._stop = threading.Event()

    def run(self) -> Summary:
        from tqdm import tqdm

        started = time.monotonic()
        journal = Appender(self.journal_path)
        results = Appender(self.out) if self.out is not None else None
        if not self.journal_path.stat().st_size:
            journal.write([{"source": str(self.inp.path), "source_sha256": self.inp.digest}])
        total = self.summary.lines if self.opts.wait else len(self.inp.lines)
        self.bar = tqdm(total=total, initial=self.summary.resumed if self.opts.wait else 0, unit="job",
                        disable=not self.opts.progress, file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                        desc="done" if self.opts.wait else "submitted")
        self._postfix()
        pool = ThreadPoolExecutor(max_workers=self.opts.concurrency, thread_name_prefix="bulk")
        try:
            if results is not None:
                self._write(results, [result_record(self.inp, n, error={"code": "invalid_json", "message": why})
                                      for n, why in self.inp.invalid if n not in self.finished], failed=True)
            self._loop(pool, journal, results, started)
        finally:
            self._stop.set()  # a request thread waiting out a quota gives up, so the process can exit
            pool.shutdown(wait=False, cancel_futures=True)
            self.bar.close()
            journal.close()
            if results is not None:
                results.close()
        self.summary.unfinished = len(self.outstanding)
        self.summary.elapsed_s = time.monotonic() - started
        return self.summary

    def _loop(self, pool: ThreadPoolExecutor, journal: Appender, results: Appender | None, started: float) -> None:
        running: dict[Future[list[dict[str, Any]]], list[Line]] = {}
        deadline = started + self.opts.timeout_s if self.opts.timeout_s else None
        last_lookup = 0.0
        while self.pending or self.deferred or running or (self.opts.wait and self.outstanding):
            now = time.monotonic()
            if deadline is not None and now >= deadline and not (self.pending or self.deferred or running):
                return  # what is left is waiting for jobs: a rerun continues
            due = [ln for t, ln in self.deferred if t <= now]
            if due:
                self.deferred = [(t, ln) for t, ln in self.deferred if t > now]
                self.pending.extendleft(reversed(due))
            while self.pending and len(running) < self.opts.concurrency:
                chunk = [self.pending.popleft() for _ in range(min(self.opts.chunk, len(self.pending)))]
                items = [{**ln.body, "idempotency_key": ln.body.get("idempotency_key") or self.inp.key(ln.number)}
                         for ln in chunk]
                running[pool.submit(self._send, items)] = chunk
            caught_up = False
            if self.opts.wait and self.outstanding and now - last_lookup >= self.opts.poll_s:
                last_lookup = now
                caught_up = self._follow(results) == LOOKUP_MAX  # a full page ended: look again at once
                if caught_up:
                    last_lookup = 0.0
            if running:
                ready, _ = wait(running, timeout=0 if caught_up else self.opts.poll_s, return_when=FIRST_COMPLETED)
                for f in ready:
                    self._accepted(running.pop(f), f.result(), journal, results)
                if not self.pending and not self.deferred and not running and not self.summary.submit_s:
                    self.summary.submit_s = time.monotonic() - started
            elif not caught_up:
                time.sleep(self.opts.poll_s if not self.deferred else min(self.opts.poll_s, 0.2))
        if not self.summary.submit_s:
            self.summary.submit_s = time.monotonic() - started

    def _send(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One bulk request, with the SDK's retries. Only ids and errors are read here, so the jobs come back
        minimal and stay plain dicts: the whole job, validated, would take CPU from an API on the same host."""
        while True:
            r = self.client.request("POST", "/v1/jobs/bulk", json={"jobs": items}, headers=_core.MINIMAL)
            if r.status_code != 429:
                return _core.check(r)["data"]  # type: ignore[no-any-return]
            # The client's retries are spent and the key is still over a quota (its in-flight limit, say,
            # while a long backlog drains): wait as told and send the same items again; their idempotency
            # keys make that safe.
            if self._stop.wait(_core.retry_after(r) or 1.0):
                raise InterruptedError("the bulk run stopped")

    def _accepted(self, chunk: list[Line], answers: list[dict[str, Any]], journal: Appender,
                  results: Appender | None) -> None:
        records, refused = [], []
        for line, answer in zip(chunk, answers, strict=True):
            error = answer.get("error") if "id" not in answer else None
            if error is None:
                records.append({"line": line.number, "id": answer["id"]})
                self.outstanding[answer["id"]] = line.number
            elif error.get("code") == "rate_limited":  # the key's in-flight quota: send it again shortly
                self.deferred.append((time.monotonic() + 1.0, line))
            else:
                refused.append(result_record(self.inp, line.number, error=error))
        journal.write(records)
        self.summary.submitted += len(records)
        if not self.opts.wait:
            self.bar.update(len(records))
            self.outstanding.clear()
        if results is not None:
            self._write(results, refused, failed=True)
        else:
            self.summary.failed += len(refused)
        self._postfix()

    def _follow(self, results: Appender | None) -> int:
        """Look up the oldest outstanding jobs; write the ended ones. Returns how many ended."""
        ids = [job_id for job_id, _ in zip(self.outstanding, range(LOOKUP_MAX), strict=False)]
        answer = _core.check(self.client.request("POST", "/v1/jobs/lookup", json={"ids": ids, "ended_only": True}))
        ended, missing = answer["data"], answer["missing"]
        records = []
        for j in ended:
            records.append(result_record(self.inp, self.outstanding.pop(j["id"]), j))
            if j["status"] == "succeeded":
                self.summary.succeeded += 1
            else:
                self.summary.failed += 1
        for job_id in missing:  # deleted, or another key's: nothing to wait for
            records.append(result_record(self.inp, self.outstanding.pop(job_id),
                                         error={"code": "not_found", "message": f"job {job_id} is gone"}))
            self.summary.failed += 1
        if results is not None:
            results.write(records)
        self.bar.update(len(records))
        self._postfix()
        return len(ended) + len(missing)

    def _write(self, results: Appender, records: list[dict[str, Any]], failed: bool) -> None:
        results.write(records)
        if failed:
            self.summary.failed += len(records)
        self.bar.update(len(records))

    def _postfix(self) -> None:
        # As strings: tqdm writes large numbers as 2e+4.
        self.bar.set_postfix(submitted=str(self.summary.submitted), failed=str(self.summary.failed),
                             in_flight=str(len(self.outstanding)), refresh=False)
