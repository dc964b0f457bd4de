"""A deterministic stand-in for a model's engine, for running the worker's job path without ONNX Runtime.

It keeps the real engines' contract (``genqueue_worker.engine.types.Engine``): ``submit`` is thread-safe and
returns a future, a loop thread of its own runs every admitted job one step at a time and resolves each job's
future the step it ends, ``cancel`` stops a job between steps, and ``stop`` drains or gives up what is left
with ``shutdown``. A text job takes one step per new token and an image job one step, so the jobs of one
message end at different times, the shortest first, as they do in the real engines.

What it generates depends only on the request (``fake_texts``, ``fake_png``), so a test can say what each job's
output must be. Two prompt prefixes change a job's course: ``fail`` fails that job alone with
``engine_error``, and ``hold`` makes a job that never ends on its own (until canceled or stopped).
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from genqueue_worker.engine.types import EncodedImage, ErrorCode, ImageRequest, JobResult, TextRequest

WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "in", "park", "sun")
IMAGE_SIZE = 8
STEP_S = 0.002  # one step's time, so that a held job does not spin a core


def fake_texts(prompt: str, seed: int, n: int, max_new_tokens: int) -> list[str]:
    """The candidates the fake generates: ``max_new_tokens`` words each, drawn from (prompt, seed, candidate)."""
    out = []
    for c in range(n):
        rng = random.Random(f"{prompt}|{seed}|{c}")
        out.append(" ".join(rng.choice(WORDS) for _ in range(max_new_tokens)))
    return out


def fake_png(seed: int, index: int) -> bytes:
    """Image ``index`` of a job seeded ``seed``: grey noise, far from blank, as a PNG."""
    rng = random.Random(f"{seed}|{index}")
    im = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE))
    im.putdata([rng.randrange(256) for _ in range(IMAGE_SIZE * IMAGE_SIZE)])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class _Job:
    request: TextRequest | ImageRequest
    future: Future[JobResult]
    arrival: int
    steps_left: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.request.job_id


class FakeEngine:
    def __init__(self, max_batch_size: int = 8) -> None:
        self.max_batch_size = max_batch_size
        self.admitted: list[str] = []  # job ids in the order the loop admitted them
        self._waiting: list[_Job] = []
        self._running: list[_Job] = []
        self._cancels: set[str] = set()
        self._arrivals = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._drain = True
        self._deadline = 0.0
        self._thread: threading.Thread | None = None

    # -- the Engine contract -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fake-engine", daemon=True)
        self._thread.start()

    def submit(self, request: TextRequest | ImageRequest) -> Future[JobResult]:
        fut: Future[JobResult] = Future()
        with self._cond:
            if self._stopping:
                fut.set_result(_shutdown(request.job_id))
                return fut
            self._arrivals += 1
            self._waiting.append(_Job(request, fut, self._arrivals))
            self._cond.notify()
        return fut

    def submit_many(self, requests: Sequence[TextRequest | ImageRequest]) -> list[Future[JobResult]]:
        return [self.submit(r) for r in requests]

    def cancel(self, job_id: str) -> None:
        with self._cond:
            waiting = [j for j in self._waiting if j.job_id == job_id]
            if waiting:  # not admitted yet: it ends now
                self._waiting.remove(waiting[0])
                waiting[0].future.set_result(JobResult(job_id, "canceled"))
                return
            self._cancels.add(job_id)  # running: it ends at the next step
            self._cond.notify()

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping, self._drain = True, drain
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # -- for tests -----------------------------------------------------------------------------------------
    def wait_admitted(self, job_ids: list[str], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if set(job_ids) <= set(self.admitted):
                    return True
            time.sleep(0.005)
        return False

    # -- the loop ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._running or self._stopping or self._cancels):
                    self._cond.wait()
                if self._stopping:
                    # Nothing new is admitted; what runs may finish until the deadline (when draining).
                    left = self._waiting + (self._running if not self._drain or time.monotonic() > self._deadline
                                            else [])
                    self._waiting = []
                    self._running = [j for j in self._running if j not in left]
                    for j in left:
                        j.future.set_result(_shutdown(j.job_id))
                    if not self._running:
                        return
                self._waiting.sort(key=lambda j: (j.request.priority, j.arrival))
                while self._waiting and len(self._running) < self.max_batch_size:
                    job = self._waiting.pop(0)
                    job.steps_left = _steps(job.request)
                    self._running.append(job)
                    self.admitted.append(job.job_id)
                cancels, self._cancels = self._cancels, set()
                running = list(self._running)
            for job in running:
                job.batch_sizes.append(len(running))
                if job.job_id in cancels:
                    self._finish(job, JobResult(job.job_id, "canceled"))
                    continue
                job.steps_left -= 1
                if job.steps_left <= 0:
                    self._finish(job, _result(job))
            time.sleep(STEP_S)

    def _finish(self, job: _Job, result: JobResult) -> None:
        with self._cond:
            self._running.remove(job)
        job.future.set_result(result)


def _steps(request: TextRequest | ImageRequest) -> float:
    if isinstance(request, ImageRequest):
        return 1
    if request.prompt.startswith("hold"):
        return float("inf")
    return max(1, request.params.max_new_tokens)


def _shutdown(job_id: str) -> JobResult:
    return JobResult(job_id, "failed", error_code=ErrorCode.shutdown, error_message="the engine stopped")


def _result(job: _Job) -> JobResult:
    req = job.request
    mean_batch = sum(job.batch_sizes) / len(job.batch_sizes)
    if isinstance(req, ImageRequest):
        p = req.params
        images = [EncodedImage(fake_png(p.seed, i), IMAGE_SIZE, IMAGE_SIZE, "png") for i in range(p.num_images)]
        return JobResult(req.job_id, "succeeded", output={}, images=images,
                         metrics={"tokens": float(p.num_images), "batch_size": mean_batch})
    if req.prompt.startswith("fail"):
        return JobResult(req.job_id, "failed", error_code=ErrorCode.engine_error,
                         error_message="the fake runner failed for this job")
    t = req.params
    texts = fake_texts(req.prompt, t.seed, t.n, t.max_new_tokens)
    return JobResult(req.job_id, "succeeded", output={"texts": texts, "finish_reasons": ["length"] * t.n},
                     metrics={"tokens": float(t.n * t.max_new_tokens), "batch_size": mean_batch})
