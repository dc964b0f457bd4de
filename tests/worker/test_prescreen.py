"""The automatic pre-screen: its flags, and the grey-level statistic the image engine hands it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genqueue.settings import Settings
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


def test_personal_data_rules() -> None:
    flags = prescreen.text_flags(["Write to ann.lee@mail.example.org or call +44 20 7946 0958 today.",
                                  "More at https://example.com/page and www.example.org"])
    assert flags == [{"rule": "pii_email", "score": 0.5}, {"rule": "pii_phone", "score": 0.5},
                     {"rule": "url", "score": 0.6}]
    # Numbers that are not phone numbers: a date, a year, a short code.
    assert prescreen.text_flags(["On 2024-01-02 at 10:30, in 1999, code 12345."]) == []
    assert prescreen.text_flags(["a@b.co a@b.co c@d.io"]) == [{"rule": "pii_email", "score": 1.0}]


def test_a_deployments_blocklist(tmp_path: Path) -> None:
    words = tmp_path / "blocklist.txt"
    words.write_text("# one entry a line\nsecret project\nZorblax\n", encoding="utf-8")
    settings = Settings(blocklist="grumble, snark", blocklist_file=words)
    rules = prescreen.text_rules(settings)
    assert prescreen.text_rules(settings) is rules  # read once
    assert prescreen.text_flags(["the Secret Project of zorblax"], rules) == [{"rule": "blocklist", "score": 0.667}]
    assert prescreen.text_flags(["grumble snark kill"], rules) == [{"rule": "blocklist", "score": 1.0}]
    assert prescreen.text_flags(["a secret, then a project"], rules) == []  # a phrase is its words in a row
    assert prescreen.text_flags(["grumble"]) == []  # the built-in list alone


def test_rules_are_pluggable() -> None:
    class Shouting:
        name = "shouting"

        def score(self, texts: Sequence[str]) -> float:
            letters = [c for t in texts for c in t if c.isalpha()]
            return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0

    assert prescreen.text_flags(["STOP THAT now"], [Shouting()]) == [{"rule": "shouting", "score": 0.727}]


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
