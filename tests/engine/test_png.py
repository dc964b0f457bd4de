"""The engine's PNG writer: lossless round trips through Pillow's decoder, and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from genqueue_worker.engine.png import encode_png


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB"), (4, "RGBA")])
@pytest.mark.parametrize(("h", "w"), [(1, 1), (32, 32), (7, 13), (64, 3)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_pixels_round_trip_exactly(channels: int, mode: str, h: int, w: int, level: int) -> None:
    rng = np.random.default_rng(h * 100 + w * 10 + channels)
    px = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    im = Image.open(io.BytesIO(encode_png(px, level)))
    im.load()  # decodes the whole stream: a bad CRC or a short IDAT raises here
    assert im.format == "PNG" and im.mode == mode and im.size == (w, h)
    assert np.array_equal(np.asarray(im).reshape(h, w, channels), px)


def test_non_contiguous_views_encode_their_own_pixels() -> None:
    px = np.arange(2 * 6 * 5 * 3, dtype=np.uint8).reshape(2, 3, 6, 5).transpose(0, 2, 3, 1)[1]  # [6,5,3] view
    assert not px.flags.c_contiguous
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(px)))), px)


def test_flat_images_compress() -> None:
    px = np.zeros((64, 64, 1), np.uint8)
    px[20:40, 30:34] = 255
    assert len(encode_png(px, 1)) < 64 * 64 // 10 < len(encode_png(px, 0))


@pytest.mark.parametrize(
    ("px", "level", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), 1, "cannot encode 2-channel images"),
        (np.zeros((4, 4, 3), np.float32), 1, "PNG needs uint8 [H,W,C] pixels"),
        (np.zeros((4, 4), np.uint8), 1, "PNG needs uint8 [H,W,C] pixels"),
        (np.zeros((0, 4, 1), np.uint8), 1, "cannot encode an empty 0x4 image"),
        (np.zeros((4, 4, 1), np.uint8), 10, "compress_level must be in 0..9"),
    ],
)
def test_bad_input_is_refused(px: np.ndarray, level: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode_png(px, level)
