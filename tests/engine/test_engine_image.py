"""Image engine: dynamic batching, per-image seeds, validation, encoding, failure isolation."""

from __future__ import annotations

import io
import os
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genqueue_worker.engine.image_engine import ImageEngine, ImageEngineConfig
from genqueue_worker.engine.runner import ImageModelInfo
from genqueue_worker.engine.types import EncodedImage, ErrorCode, ImageParams, ImageRequest, JobResult
from tests.engine.fake_runners import FakeImageRunner


def engine(runner: FakeImageRunner | None = None, **cfg: Any) -> ImageEngine:
    return ImageEngine(runner=runner or FakeImageRunner(), config=ImageEngineConfig(**cfg))


def reqs(k: int = 6) -> list[ImageRequest]:
    return [
        ImageRequest(f"j{i}", ImageParams(seed=i, num_images=1 + i % 3, class_label=i % 10, format="png" if i % 2 else "webp", truncation=[1.0, 0.7][i % 2]))
        for i in range(k)
    ]


def pixels(r: JobResult) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(img.data))) for img in r.images]


def same(a: JobResult, b: JobResult) -> bool:
    return a.status == b.status and [i.data for i in a.images] == [i.data for i in b.images]


def test_images_identical_alone_and_batched_and_split() -> None:
    rs = reqs()
    alone = [engine().run_all([r])[0] for r in rs]
    eng = engine(max_batch_size=64)
    batched = eng.run_all(rs)
    assert all(same(a, b) for a, b in zip(alone, batched, strict=True))
    assert [c.rows for c in eng.runner.calls] == [12]  # type: ignore[attr-defined]
    small = engine(max_batch_size=2)  # the 3-image jobs are split over two forwards
    assert all(same(a, b) for a, b in zip(alone, small.run_all(rs), strict=True))
    assert max(c.rows for c in small.runner.calls) <= 2  # type: ignore[attr-defined]
    assert batched[2].metrics["batch_size"] == 12 and batched[2].metrics["tokens"] == 3


def test_each_image_of_a_job_has_its_own_seed_stream() -> None:
    r = engine().run_all([ImageRequest("a", ImageParams(seed=3, num_images=3, class_label=1))])[0]
    p = pixels(r)
    assert not np.array_equal(p[0], p[1])
    first = engine().run_all([ImageRequest("b", ImageParams(seed=3, num_images=1, class_label=1))])[0]
    assert r.images[0].data == first.images[0].data  # image 0 does not depend on num_images


def test_png_and_webp_decode_with_the_right_size() -> None:
    res = engine().run_all(
        [ImageRequest("p", ImageParams(num_images=2, class_label=0, format="png")), ImageRequest("w", ImageParams(class_label=0, format="webp"))]
    )
    assert res[0].output == {"images": [{"width": 8, "height": 8, "format": "png"}] * 2}
    for r, fmt, mode in [(res[0], "PNG", "L"), (res[1], "WEBP", "RGB")]:  # WebP has no grey mode
        for img in r.images:
            im = Image.open(io.BytesIO(img.data))
            assert im.format == fmt and im.size == (8, 8) and im.mode == mode


def test_rgb_output_and_value_mapping() -> None:
    runner = FakeImageRunner(info=ImageModelInfo(16, 0, 3, 4, 4))
    res = engine(runner).run_all([ImageRequest("a", ImageParams(seed=1))])[0]
    got = pixels(res)[0]
    assert got.shape == (4, 4, 3)
    z = np.random.Generator(np.random.PCG64(np.random.SeedSequence([1, 0]))).standard_normal(16).astype(np.float32)
    raw = runner.forward(z[None, :], None)[0]  # [C,H,W] in [-1, 1]
    want = np.clip(np.rint((raw + 1) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("params", "conditional"),
    [
        (ImageParams(class_label=None), True),
        (ImageParams(class_label=10), True),
        (ImageParams(class_label=-1), True),
        (ImageParams(class_label=3), False),
        (ImageParams(class_label=1, num_images=0), True),
        (ImageParams(class_label=1, num_images=65), True),
        (ImageParams(class_label=1, truncation=0.0), True),
        (ImageParams(class_label=1, truncation=1.5), True),
        (ImageParams(class_label=1, format="gif"), True),  # type: ignore[arg-type]
    ],
)
def test_invalid_input(params: ImageParams, conditional: bool) -> None:
    info = ImageModelInfo(16, 10 if conditional else 0, 1, 8, 8)
    res = engine(FakeImageRunner(info=info)).run_all([ImageRequest("a", params)])[0]
    assert res.status == "failed" and res.error_code is ErrorCode.invalid_input


def test_failures_are_isolated() -> None:
    rs = reqs()
    runner_kw = dict(poison_label=7, nan_label=8)
    alone = {r.job_id: engine(FakeImageRunner(**runner_kw)).run_all([r])[0] for r in rs}  # type: ignore[arg-type]
    bad = [
        ImageRequest("poison", ImageParams(class_label=7, num_images=2)),
        ImageRequest("nan", ImageParams(class_label=8)),
    ]
    eng = engine(FakeImageRunner(**runner_kw), max_attempts=2)  # type: ignore[arg-type]
    res = {r.job_id: r for r in eng.run_all([*rs[:3], *bad, *rs[3:]])}
    assert res["poison"].error_code is ErrorCode.engine_error
    assert res["nan"].error_code is ErrorCode.nan_output
    assert all(same(alone[r.job_id], res[r.job_id]) for r in rs)


def test_nan_images_fail_their_job_inside_a_batch_that_succeeded() -> None:
    rs = reqs()
    alone = {r.job_id: engine(FakeImageRunner(nan_label=8)).run_all([r])[0] for r in rs}
    eng = engine(FakeImageRunner(nan_label=8), warmup=False)
    nan = ImageRequest("nan", ImageParams(class_label=8, num_images=2))
    res = {r.job_id: r for r in eng.run_all([*rs[:2], nan, *rs[2:]])}
    assert eng.forwards == 1  # one forward for everybody: the NaN rows are found in its output
    assert res["nan"].error_code is ErrorCode.nan_output
    assert all(same(alone[r.job_id], res[r.job_id]) for r in rs)


def test_an_encoding_failure_fails_its_job_alone() -> None:
    class NoWebp(ImageEngine):
        def _encode_one(self, pixels: np.ndarray, fmt: str) -> EncodedImage:
            if fmt == "webp":
                raise OSError("encoder not available")
            return super()._encode_one(pixels, fmt)

    class Buggy(ImageEngine):
        def _encode_and_resolve(self, job: Any) -> None:
            if job.request.job_id == "j2":
                raise KeyError("a bug")
            super()._encode_and_resolve(job)

    rs = reqs()
    alone = {r.job_id: engine().run_all([r])[0] for r in rs}
    for cls, bad in ((NoWebp, {r.job_id for r in rs if r.params.format == "webp"}), (Buggy, {"j2"})):
        eng = cls(runner=FakeImageRunner(), config=ImageEngineConfig(warmup=False))
        res = {r.job_id: r for r in eng.run_all(rs)}
        assert eng.forwards == 1  # every job in one forward, so their encodings share the pool's tasks
        for r in rs:
            if r.job_id in bad:
                assert res[r.job_id].error_code is ErrorCode.postprocess_error, r.job_id
            else:
                assert same(alone[r.job_id], res[r.job_id]), r.job_id


def test_transient_failure_is_retried() -> None:
    rs = reqs()
    clean = engine().run_all(rs)
    res = engine(FakeImageRunner(fail_calls={0})).run_all(rs)
    assert all(same(a, b) for a, b in zip(clean, res, strict=True))


def test_queue_delay_forms_one_batch_from_separate_submits() -> None:
    runner = FakeImageRunner()
    eng = engine(runner, max_batch_size=8, max_queue_delay_ms=200, warmup=False)
    eng.start()
    try:
        futs = [eng.submit(ImageRequest(f"j{i}", ImageParams(class_label=0, seed=i))) for i in range(3)]
        results = [f.result(5) for f in futs]
    finally:
        eng.stop()
    assert [c.rows for c in runner.calls] == [3]
    assert all(r.status == "succeeded" and r.metrics["batch_size"] == 3 for r in results)


def test_full_batch_does_not_wait_for_the_delay() -> None:
    eng = engine(max_batch_size=4, max_queue_delay_ms=5000, warmup=False)
    eng.start()
    try:
        t0 = time.perf_counter()
        fut = eng.submit(ImageRequest("a", ImageParams(class_label=0, num_images=4)))
        assert fut.result(5).status == "succeeded"
        assert time.perf_counter() - t0 < 2
    finally:
        eng.stop()


def test_priority_orders_the_queue() -> None:
    seen: list[int] = []

    class Recording(FakeImageRunner):
        def forward(self, z: np.ndarray, class_label: np.ndarray | None) -> np.ndarray:
            assert class_label is not None
            seen.extend(sorted(set(class_label.tolist())))
            return super().forward(z, class_label)

    eng = engine(Recording(), max_batch_size=2)
    rs = [ImageRequest(f"j{p}", ImageParams(class_label=p, num_images=2), priority=p) for p in (5, 9, 0)]
    res = eng.run_all(rs)
    assert all(r.status == "succeeded" for r in res)
    assert seen == [0, 5, 9]  # one forward per job, highest priority (0) first, then arrival


def test_cancel_and_shutdown() -> None:
    runner = FakeImageRunner(delay_s=0.2)
    eng = engine(runner, max_batch_size=1, max_queue_delay_ms=0, warmup=False)
    eng.start()
    first = eng.submit(ImageRequest("a", ImageParams(class_label=0)))
    queued = eng.submit(ImageRequest("b", ImageParams(class_label=0)))
    time.sleep(0.05)
    eng.cancel("b")
    assert queued.result(5).status == "canceled"
    assert first.result(5).status == "succeeded"
    eng.stop()
    late = eng.submit(ImageRequest("c", ImageParams(class_label=0)))
    assert late.result(1).error_code is ErrorCode.shutdown


def test_a_forward_that_outlives_stop_still_resolves_its_jobs() -> None:
    import threading

    release = threading.Event()

    class SlowRunner(FakeImageRunner):
        def forward(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
            release.wait(10)  # still running when stop() stops waiting for the loop
            return super().forward(z, labels)

        def close(self) -> None:  # like OrtImageRunner.close(): the forward in flight ends while it runs
            release.set()
            time.sleep(0.3)

    eng = engine(SlowRunner(), max_batch_size=4, max_queue_delay_ms=0, encode_threads=1, warmup=False)
    eng.start()
    fut = eng.submit(ImageRequest("j1", ImageParams(seed=1, class_label=0)))
    time.sleep(0.2)  # j1 is inside its forward
    eng.stop(drain=True, timeout=0.1)
    res = fut.result(timeout=5)  # resolved: the glue gives a shutdown job back instead of hanging on it
    assert res.status == "failed" and res.error_code is ErrorCode.shutdown
    assert not eng._jobs


def test_real_generator_alone_vs_batched(models: dict[str, Any]) -> None:
    from genqueue_worker.engine import load_engine

    entry = models["image"]
    # Two parts whatever the machine: the batched forward (15 images) runs as two sub-batches at once.
    eng = load_engine(entry, "cpu", max_batch_size=16, forward_parts=2)
    assert isinstance(eng, ImageEngine)
    n = eng.info.num_classes
    rs = [
        ImageRequest(f"j{i}", ImageParams(seed=10 + i, num_images=1 + i % 3, class_label=(i % n) if n else None, format="png" if i % 2 else "webp", truncation=[1.0, 0.6][i % 2]))
        for i in range(8)
    ]
    alone = [eng.run_all([r])[0] for r in rs]
    batched = eng.run_all(rs)
    assert all(r.status == "succeeded" for r in batched)
    for a, b in zip(alone, batched, strict=True):
        assert same(a, b)
        assert all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))
    spec = entry.manifest.image
    im = Image.open(io.BytesIO(batched[1].images[0].data))
    assert im.size == (spec.width, spec.height) and im.format == "PNG"
    assert Image.open(io.BytesIO(batched[0].images[0].data)).format == "WEBP"
    eng.stop()


def test_a_split_forward_gives_the_pixels_of_an_unsplit_one(models: dict[str, Any]) -> None:
    from genqueue_worker.engine.ort_image import MIN_PART, OrtImageRunner
    from genqueue_worker.engine.ort_session import SessionConfig

    entry = models["image"]
    info = ImageModelInfo.from_spec(entry.manifest.image)
    rng = np.random.default_rng(3)
    z = rng.standard_normal((37, info.latent_size)).astype(np.float32)  # uneven parts
    labels = (np.arange(37) % info.num_classes).astype(np.int64) if info.num_classes else None
    whole = OrtImageRunner(entry.onnx_path, info, SessionConfig(provider="cpu"), parts=1)
    ref = whole.forward(z, labels)
    assert whole.parts == 1
    for parts in (2, 3):
        split = OrtImageRunner(entry.onnx_path, info, SessionConfig(provider="cpu"), parts=parts)
        try:
            assert np.array_equal(split.forward(z, labels), ref)
            assert np.array_equal(split.forward(z[:5], None if labels is None else labels[:5]), ref[:5])  # too few to split
            one = split.forward(z[7:8], None if labels is None else labels[7:8])
            assert np.array_equal(one, ref[7:8])
        finally:
            split.close()
    assert 2 * MIN_PART > 5
    with pytest.raises(ValueError, match="parts"):
        OrtImageRunner(entry.onnx_path, info, SessionConfig(provider="cpu"), parts=-1)


def test_duplicate_submit_shares_the_result() -> None:
    eng = engine()
    req = ImageRequest("same", ImageParams(class_label=2, seed=5))
    futs = [eng.submit(req), eng.submit(req)]
    eng._loop(until_idle=True)
    a, b = (f.result(5) for f in futs)
    assert a.status == "succeeded" and same(a, b)
    assert sum(c.rows for c in eng.runner.calls) == 1  # type: ignore[attr-defined]


def test_internal_error_fails_the_batch_and_the_engine_recovers() -> None:
    class Broken(FakeImageRunner):
        armed = True

        def forward(self, z: np.ndarray, class_label: np.ndarray | None) -> np.ndarray:
            out = super().forward(z, class_label)
            if self.armed:
                self.armed = False
                return out[:, :, :, :, None]  # a wrong rank: breaks post-processing, not the forward call
            return out

    eng = engine(Broken())
    first = eng.run_all([ImageRequest("a", ImageParams(class_label=1))])
    assert first[0].error_code is ErrorCode.engine_error
    assert eng.run_all([ImageRequest("b", ImageParams(class_label=1))])[0].status == "succeeded"


def test_encode_threads_default_to_the_usable_cores_up_to_four() -> None:
    eng = engine(warmup=False)
    assert eng.encode_threads == min(4, len(os.sched_getaffinity(0)))  # Linux, where the tests run
    eng.stop()
    assert engine(encode_threads=3, warmup=False).encode_threads == 3
    with pytest.raises(ValueError, match="encode_threads"):
        engine(encode_threads=-1)


def test_png_compress_level_out_of_range_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="png_compress_level must be in 0..9"):
        engine(png_compress_level=12)


def test_an_image_with_no_grey_levels_fails_its_job_at_encoding() -> None:
    # 2 channels: neither grey nor RGB(A). The job fails with postprocess_error, and nothing else in the batch.
    res = engine(FakeImageRunner(info=ImageModelInfo(16, 0, 2, 4, 4))).run_all([ImageRequest("two", ImageParams(seed=1))])[0]
    assert res.status == "failed" and res.error_code is ErrorCode.postprocess_error
    assert "cannot encode 2-channel images" in (res.error_message or "")


def test_jobs_submitted_together_share_a_forward_even_without_a_queue_delay() -> None:
    # A message's chunk reaches the batcher in one hand-off (submit_many), so with no queue delay at all the
    # loop still finds all of it at once; one by one, the loop starts on the first job alone.
    class SlowCaller(ImageEngine):
        def _prepare(self, req: ImageRequest, future: Any) -> Any:
            time.sleep(0.002)  # a busy task thread between two jobs of one message
            return super()._prepare(req, future)

    def run(together: bool) -> list[int]:
        rs = [ImageRequest(f"m{i}", ImageParams(seed=i, num_images=1, class_label=i % 10)) for i in range(40)]
        eng = SlowCaller(runner=FakeImageRunner(), config=ImageEngineConfig(max_batch_size=64, max_queue_delay_ms=0,
                                                                             warmup=False))
        eng.start()
        try:
            futures = eng.submit_many(rs) if together else [eng.submit(r) for r in rs]
            assert [f.result(30).status for f in futures] == ["succeeded"] * 40
        finally:
            eng.stop()
        return [c.rows for c in eng.runner.calls]  # type: ignore[attr-defined]

    assert run(together=True) == [40]
    assert len(run(together=False)) > 1  # what a message's jobs got when handed over one at a time
