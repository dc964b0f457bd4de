"""The automatic pre-screen: its flags, and the grey-level statistic the image engine hands it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genqueue.enums import ReviewStatus
from genqueue_worker import prescreen
from genqueue_worker.engine.fake import FakeImageRunner
from genqueue_worker.engine.image_engine import ImageEngine, ImageEngineConfig, luma_std
from genqueue_worker.engine.png import encode_png
from genqueue_worker.engine.runner import ImageModelInfo
from genqueue_worker.engine.types import ImageParams, ImageRequest


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_luma_std_equals_decoding_the_file_with_pillow(channels: int) -> None:
    rng = np.random.default_rng(channels)
    px = rng.integers(0, 256, (5, 9, 7, channels), dtype=np.uint8)
    px[2] = 77  # a uniform image
    px[3, ..., :3] = rng.integers(100, 104, (9, 7, 1), dtype=np.uint8)  # grey levels within a few steps
    got = luma_std(px)
    assert got.shape == (5,) and got[2] == 0.0
    for i in range(5):
        assert got[i] == pytest.approx(prescreen.decoded_luma_std(encode_png(px[i])), abs=1e-4)


def test_image_flags_score_the_share_of_blank_images() -> None:
    assert prescreen.image_flags([30.0, 12.5]) == []
    assert prescreen.image_flags([30.0, 0.0, 3.9, 40.0]) == [{"rule": "blank_image", "score": 0.5}]


def test_text_flags() -> None:
    assert prescreen.text_flags(["A quiet morning in the garden."]) == []
    assert prescreen.text_flags(["they kill with a weapon"]) == [{"rule": "blocklist", "score": 0.667}]
    looped = "the cat sat on the mat " * 4
    assert [f["rule"] for f in prescreen.text_flags([looped])] == ["repetition"]
    assert prescreen.text_flags(["", "  "]) == [{"rule": "empty_output", "score": 1.0}]


@pytest.mark.parametrize(
    ("policy", "auto", "flags", "status"),
    [
        ("none", "flagged", [{"rule": "x"}], ReviewStatus.not_required),
        ("required", "none", [], ReviewStatus.pending),
        ("auto", "flagged", [], ReviewStatus.not_required),
        ("auto", "flagged", [{"rule": "x"}], ReviewStatus.pending),
        ("auto", "all", [], ReviewStatus.pending),
        ("auto", "none", [{"rule": "x"}], ReviewStatus.not_required),
    ],
)
def test_review_status(policy: str, auto: str, flags: list[dict[str, Any]], status: ReviewStatus) -> None:
    assert prescreen.review_status(policy, auto, flags) is status


def test_the_engine_reports_each_images_luma_std() -> None:
    runner = FakeImageRunner(info=ImageModelInfo(16, 0, 3, 6, 6))
    eng = ImageEngine(runner=runner, config=ImageEngineConfig(max_batch_size=4))
    res = eng.run_all([ImageRequest(f"j{i}", ImageParams(seed=i, num_images=3, format="png" if i else "webp")) for i in range(3)])
    for r in res:
        assert r.status == "succeeded" and len(r.images) == 3
        for im in r.images:
            assert im.luma_std is not None
            if im.format == "png":  # lossless: the file's grey levels are the engine's
                assert im.luma_std == pytest.approx(prescreen.decoded_luma_std(im.data), abs=1e-4)
            else:
                assert Image.open(io.BytesIO(im.data)).size == (6, 6)
