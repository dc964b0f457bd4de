"""Image engine: request-level dynamic batching in the style of Triton's dynamic batcher.

The batching decisions (chunks, the queue delay, what one forward takes) are :class:`ImageBatcher`'s
(image_batcher.py); the loop (inbox, cancels, stop and drain) is the one both engines share (loop.py). Each
step runs one forward for the batch the batcher formed. Submissions keep queueing while a forward runs, so
the next batch is already formed when it returns; PNG/WebP encoding runs on a small thread pool, off the
inference path.

Reproducibility: image i of a job uses z from ``seed_generator(seed, i)`` (PCG64 seeded from (seed, i)),
drawn at submit time, so batching never changes an image.

Batching pays most on GPUs, where a forward of 64 costs about as much as one. On CPU, onnxruntime's
ConvTranspose runs image by image, so a batch pays through the per-core split of the runner (ort_image.py:
one single-threaded sub-batch per core) and through the per-call costs it shares; encoding does not batch,
so PNG is written by png.py (~27 us of CPU per 32x32 digit, against ~45 us through Pillow) and Pillow keeps
WebP.

Truncation trick (``truncation`` t in (0, 1], 1 = none): z ~ N(0, I) is scaled by t (the "psi" form of
truncation towards the prior's mean, 0 for DCGAN). Chosen over resampling components beyond a threshold
because it is continuous in t, needs no rejection loop, and t = 1 is exactly the untruncated prior.
"""

from __future__ import annotations

import io
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from genqueue.registry import ModelEntry, ModelKind
from genqueue_worker.engine.image_batcher import Chunk, ImageBatcher
from genqueue_worker.engine.loop import SHUTDOWN_MESSAGE, EngineLoop
from genqueue_worker.engine.png import encode_png
from genqueue_worker.engine.runner import ImageModelInfo, ImageRunner, ort_runner
from genqueue_worker.engine.sampling import seed_generator
from genqueue_worker.engine.types import EncodedImage, ErrorCode, ImageRequest, JobResult

log = logging.getLogger("genqueue.worker.engine")


def luma_std(pixels: np.ndarray) -> np.ndarray:
    """Per image, the standard deviation of its grey levels: float64 [B] for uint8 pixels [B,H,W,C].

    Grey levels are Pillow's "L" conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded; alpha is
    ignored), so the value equals what the pre-screen would get by decoding the file, at a fraction of a
    microsecond per image for a whole forward instead of ~45 us per image through Pillow.
    """
    channels = pixels.shape[3]
    if channels not in (1, 3, 4):  # no grey levels defined; encoding fails these jobs with postprocess_error
        return np.zeros(pixels.shape[0])
    if channels == 1:
        grey = pixels[..., 0].astype(np.float32)
    else:
        rgb = pixels[..., :3].astype(np.uint32)
        grey = ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.float32)
    return grey.reshape(grey.shape[0], -1).std(axis=1, dtype=np.float64)


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


@dataclass(frozen=True)
class ImageEngineConfig:
    max_batch_size: int = 64  # images per forward
    max_queue_delay_ms: float = 5.0  # how long the oldest queued image may wait for the batch to fill
    max_attempts: int = 2  # solo tries of each job after a forward raised
    encode_threads: int = 0  # PNG/WebP encoding pool; 0 = one per usable core, at most 4
    intra_op_threads: int = 0  # ORT threads; 0 = ORT default
    allow_spinning: bool = True  # ORT threads busy-wait between ops (fastest alone; off when sharing cores)
    warmup: bool = True  # run batch sizes 1 and max_batch_size once at start()
    max_images_per_job: int = 64  # API limit for num_images
    webp_quality: int = 90  # lossy WebP quality (PNG is lossless)
    png_compress_level: int = 1  # zlib level for PNG (0-9)
    webp_lossless: bool = False
    # CPU: a forward of at least 8 images runs as this many single-threaded sub-batches at once (ort_image.py);
    # 0 = as many as the ORT threads (one per usable core by default), 1 = one multi-threaded run.
    forward_parts: int = 0


@dataclass(eq=False)
class _ImageJob:
    request: ImageRequest  # as submitted
    future: Future[JobResult]  # resolved once
    z: np.ndarray  # float32 [N,latent], image i from seed_generator(seed, i), times truncation
    labels: np.ndarray | None  # int64 [N] for conditional models
    submitted: float  # perf_counter at submit
    pixels: list[np.ndarray | None] = field(default_factory=list)  # uint8 [H,W,C] per image once generated
    stds: list[float] = field(default_factory=list)  # luma_std per image, beside pixels
    chunks_left: int = 0  # chunks not generated yet
    admitted: float = 0.0  # perf_counter when its first forward began
    forwards: int = 0  # forwards it took part in
    rows_sum: int = 0  # images in those forwards, summed (mean batch size = rows_sum / forwards)
    done: bool = False  # failed, canceled or handed to the encoder


_Chunk = Chunk[_ImageJob]


class ImageEngine(EngineLoop[ImageRequest, _ImageJob]):
    kind = "image"
    config: ImageEngineConfig
    runner: ImageRunner
    info: ImageModelInfo

    def __init__(self, entry: ModelEntry | None = None, provider: str = "auto",
                 config: ImageEngineConfig | None = None, *, runner: ImageRunner | None = None) -> None:
        cfg = config or ImageEngineConfig()
        super().__init__(cfg, entry, runner or ort_runner(entry, ModelKind.image, provider, cfg))
        self.batcher: ImageBatcher[_ImageJob] = ImageBatcher(cfg.max_batch_size, cfg.max_queue_delay_ms / 1000)
        if cfg.encode_threads < 0:
            raise ValueError("encode_threads must be >= 0 (0 = one per usable core, at most 4)")
        if not 0 <= cfg.png_compress_level <= 9:
            raise ValueError("png_compress_level must be in 0..9 (zlib's levels)")
        # zlib (PNG) and Pillow (WebP) release the GIL while they compress, so a GPU host's spare cores encode in parallel;
        # past ~4 threads the Python around each image (which holds the GIL) is the limit.
        self.encode_threads = cfg.encode_threads or min(4, _usable_cores())
        self._pool = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="image-encode")
        self.forwards = 0  # forward calls so far (stats)
        self.images_generated = 0

    # -- submission --------------------------------------------------------------------------------------
    def _prepare(self, req: ImageRequest, future: Future[JobResult]) -> _ImageJob | None:
        p = req.params
        job = _ImageJob(req, future, np.zeros((0, 0), np.float32), None, time.perf_counter())
        problem = None
        if not 1 <= p.num_images <= self.config.max_images_per_job:
            problem = f"num_images must be in 1..{self.config.max_images_per_job}"
        elif not 0 < p.truncation <= 1:
            problem = "truncation must be in (0, 1]"
        elif p.format not in ("png", "webp"):
            problem = "format must be 'png' or 'webp'"
        elif self.info.num_classes and p.class_label is None:
            problem = f"this model is class-conditional: class_label is required (0..{self.info.num_classes - 1})"
        elif self.info.num_classes and not 0 <= int(p.class_label or 0) < self.info.num_classes:
            problem = f"class_label must be in 0..{self.info.num_classes - 1}"
        elif not self.info.num_classes and p.class_label is not None:
            problem = "this model is unconditional: class_label is not accepted"
        if problem is not None:
            self._finish_failed(job, ErrorCode.invalid_input, problem)
            return None
        try:
            job.z = np.stack(
                [seed_generator(p.seed, i).standard_normal(self.info.latent_size) * p.truncation for i in range(p.num_images)]
            ).astype(np.float32)  # [N,latent]
        except Exception as e:
            self._finish_failed(job, ErrorCode.preprocess_error, f"sampling the latents failed: {e}")
            return None
        if self.info.num_classes:
            job.labels = np.full(p.num_images, int(p.class_label or 0), np.int64)
        job.pixels = [None] * p.num_images
        job.stds = [0.0] * p.num_images
        return job

    # -- the loop's hooks (loop thread) ------------------------------------------------------------------
    def _admit(self, job: _ImageJob) -> None:
        # Queued as of its submission: the batching window counts from when the caller handed it over.
        job.chunks_left = self.batcher.add(job, job.request.params.num_images, job.request.priority, job.submitted)

    def _ready_in(self) -> float | None:
        return self.batcher.ready_in(time.perf_counter())

    def _cancel(self, job_id: str) -> None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.done:
                return
            self.batcher.drop(job)
            self._settle(job, JobResult(job_id, "canceled", metrics=self._metrics(job)))

    def _step(self) -> None:
        batch = self.batcher.next_batch(live=lambda job: not job.done)
        if not batch:
            return
        try:
            self._run_batch(batch)
        except Exception as e:  # a bug, not a runner failure (those are retried per job)
            log.exception("%s: internal error in a batch", self.name)
            with self._cond:
                for c in batch:
                    if not c.owner.done:
                        self.batcher.drop(c.owner)
                        self._finish_failed(c.owner, ErrorCode.engine_error, f"internal engine error: {e!r}")

    def _stopped(self) -> None:
        self._pool.shutdown(wait=True)
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def _forward(self, chunks: list[_Chunk]) -> np.ndarray:
        z = np.concatenate([c.owner.z[c.start : c.start + c.count] for c in chunks])  # [B,latent]
        labels = None
        if self.info.num_classes:
            labels = np.concatenate([c.owner.labels[c.start : c.start + c.count] for c in chunks if c.owner.labels is not None])
        self.forwards += 1
        return self.runner.forward(z, labels)

    def _run_batch(self, batch: list[_Chunk]) -> None:
        t0 = time.perf_counter()
        size = sum(c.count for c in batch)
        for c in batch:
            c.owner.admitted = c.owner.admitted or t0
            c.owner.forwards += 1
            c.owner.rows_sum += size
        raw: dict[int, np.ndarray] = {}  # id(chunk) -> images [count,C,H,W]
        failed: dict[int, str] = {}  # id(job) -> message
        images: np.ndarray | None = None
        try:
            images = self._forward(batch)
        except Exception as e:
            log.warning("%s: forward of %d images failed (%s); retrying each job alone", self.name, size, e)
            for c in batch:
                if id(c.owner) in failed:
                    continue
                last: Exception = e
                for _ in range(self.config.max_attempts):
                    try:
                        raw[id(c)] = self._forward([c])
                        break
                    except Exception as e2:
                        last = e2
                else:
                    failed[id(c.owner)] = f"the runner failed on this job {self.config.max_attempts} times alone: {last}"
        # id(chunk) -> (uint8 images [count,H,W,C], all finite, luma_std per image). After a whole forward, one
        # conversion, one finiteness check and one std serve the batch: per chunk they cost ~6 numpy calls
        # for what is usually one image.
        outputs: dict[int, tuple[np.ndarray, bool, list[float]]] = {}
        if images is not None:
            finite = np.isfinite(images.reshape(size, -1)).all(axis=1).tolist()  # [B]
            pixels = self._to_uint8(images)
            stds = luma_std(pixels).tolist()
            off = 0
            for c in batch:
                outputs[id(c)] = (pixels[off : off + c.count], all(finite[off : off + c.count]), stds[off : off + c.count])
                off += c.count
        for key, imgs in raw.items():
            px = self._to_uint8(imgs)
            outputs[key] = (px, bool(np.isfinite(imgs).all()), luma_std(px).tolist())
        finished: list[_ImageJob] = []  # jobs whose last chunk this forward made, for the encoder pool
        with self._cond:
            for c in batch:
                job = c.owner
                if job.done:
                    continue
                if id(job) in failed:
                    self.batcher.drop(job)
                    self._finish_failed(job, ErrorCode.engine_error, failed[id(job)])
                    continue
                pixels, ok, chunk_stds = outputs[id(c)]
                if not ok:
                    self.batcher.drop(job)
                    self._finish_failed(job, ErrorCode.nan_output, "the model produced NaN/Inf pixels for this job")
                    continue
                for i in range(c.count):
                    job.pixels[c.start + i] = pixels[i]
                    job.stds[c.start + i] = chunk_stds[i]
                self.images_generated += c.count
                job.chunks_left -= 1
                if job.chunks_left == 0:
                    job.done = True
                    finished.append(job)
        # One pool task per encoder thread, each with a share of the finished jobs in order, instead of one
        # per job: a task costs a Future and a queue round trip, 12% of the engine's host time at batch 64
        # when every job had its own (bench/FINDINGS.md item 16).
        tasks = min(len(finished), self.encode_threads)
        for k in range(tasks):
            share = finished[k::tasks]
            try:
                self._pool.submit(self._encode_jobs, share)
            except RuntimeError:  # stop() gave up waiting for this forward and shut the pool: nobody will encode
                with self._cond:
                    for job in share:
                        self._finish_failed(job, ErrorCode.shutdown, SHUTDOWN_MESSAGE)

    # -- post-processing ---------------------------------------------------------------------------------
    def _to_uint8(self, imgs: np.ndarray) -> np.ndarray:
        """float [B,C,H,W] in output_range -> uint8 [B,H,W,C], rounded to nearest."""
        lo, hi = self.info.output_range
        scaled = (imgs.astype(np.float32) - lo) * (255.0 / (hi - lo))
        with np.errstate(invalid="ignore"):  # NaN rows are converted too, then failed by the caller's check
            return np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    def _encode_one(self, pixels: np.ndarray, fmt: str) -> EncodedImage:
        h, w, c = pixels.shape
        if fmt != "webp":
            # zlib level 1: on small, smooth generated images it compresses nearly as well as the default
            # level 6 (825 against 808 bytes on the built-in digits) in less time, which is on the job's path.
            return EncodedImage(encode_png(pixels, self.config.png_compress_level), w, h, fmt)
        from PIL import Image

        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
        if mode is None:
            raise ValueError(f"cannot encode {c}-channel images")
        # frombuffer over a contiguous copy: a third of fromarray's cost, which goes through the array interface.
        img = Image.frombuffer(mode, (w, h), np.ascontiguousarray(pixels), "raw", mode, 0, 1)
        buf = io.BytesIO()
        img.save(buf, format="WEBP", quality=self.config.webp_quality, lossless=self.config.webp_lossless)
        return EncodedImage(buf.getvalue(), w, h, fmt)

    def _encode_jobs(self, jobs: list[_ImageJob]) -> None:
        for job in jobs:
            try:
                self._encode_and_resolve(job)
            except Exception as e:  # a bug, not a bad image: fail this job and go on with the others
                log.exception("%s: internal error while encoding job %s", self.name, job.request.job_id)
                failure = JobResult(job.request.job_id, "failed", error_code=ErrorCode.postprocess_error,
                                    error_message=f"internal error while encoding: {e!r}")
                with self._cond:
                    self._settle(job, failure)

    def _encode_and_resolve(self, job: _ImageJob) -> None:
        fmt = job.request.params.format
        try:
            encoded = []
            for pixels, std in zip(job.pixels, job.stds, strict=True):
                if pixels is not None:
                    image = self._encode_one(pixels, fmt)
                    image.luma_std = std
                    encoded.append(image)
        except Exception as e:
            with self._cond:
                self._finish_failed(job, ErrorCode.postprocess_error, f"encoding failed: {e}")
            return
        output = {"images": [{"width": e.width, "height": e.height, "format": e.format} for e in encoded]}
        result = JobResult(job.request.job_id, "succeeded", output=output, images=encoded, metrics=self._metrics(job))
        job.pixels = []
        with self._cond:
            self._settle(job, result)

    def _metrics(self, job: _ImageJob) -> dict[str, float]:
        now = time.perf_counter()
        return {
            "inference_ms": (now - job.admitted) * 1000 if job.admitted else 0.0,
            "wait_ms": ((job.admitted or now) - job.submitted) * 1000,
            "batch_size": job.rows_sum / job.forwards if job.forwards else 0.0,
            "tokens": float(job.request.params.num_images),
        }

    def _failed(self, job: _ImageJob, code: ErrorCode, message: str) -> JobResult:
        if code is not ErrorCode.shutdown:
            log.info("%s: job %s failed: %s (%s)", self.name, job.request.job_id, code.value, message)
        return JobResult(job.request.job_id, "failed", error_code=code, error_message=message, metrics=self._metrics(job))

    def _finish_failed(self, job: _ImageJob, code: ErrorCode, message: str) -> None:
        self._settle(job, self._failed(job, code, message))

    def _settle(self, job: _ImageJob, result: JobResult) -> None:
        job.done = True
        super()._settle(job, result)
