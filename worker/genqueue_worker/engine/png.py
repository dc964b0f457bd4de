"""A minimal PNG writer for the image engine's 8-bit outputs.

Encoding is per-image host work that batching does not share. Pillow's ``Image.save(format="PNG")`` wraps
zlib in Python (plugin lookup, chunk writers, encoder set-up); this writer builds the file from one numpy
subtraction (the Up filter), one ``zlib.compress`` call and three ``crc32`` calls. On the built-in GAN's
32x32 digits it takes ~27 us of CPU per image against Pillow's ~45, and its files are ~7% larger (825
against 767 bytes: Pillow's filter choice fits these images a little better). Pixels round-trip exactly
(tests decode the output with Pillow).

Only what the engine produces is supported: uint8 [H,W,C] with C = 1 (grey), 3 (RGB) or 4 (RGBA).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (greyscale, truecolour, truecolour + alpha)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


_IEND = _chunk(b"IEND", b"")


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG file bytes of uint8 ``pixels`` [H,W,C]; ``compress_level`` is zlib's 0-9."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"PNG needs uint8 [H,W,C] pixels, not {pixels.dtype} {list(pixels.shape)}")
    h, w, c = pixels.shape
    colour = _COLOUR_TYPE.get(c)
    if colour is None:
        raise ValueError(f"cannot encode {c}-channel images")
    if h < 1 or w < 1:
        raise ValueError(f"cannot encode an empty {h}x{w} image")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be in 0..9, not {compress_level}")
    flat = pixels.reshape(h, w * c)
    rows = np.empty((h, w * c + 1), np.uint8)
    # Filter type 2 (Up) on every scanline: each byte minus the byte above it, modulo 256 (uint8 wraps), the
    # first row against zeros. Generated images are smooth, so the differences are small numbers that
    # deflate codes in fewer bits and less time than the raw bytes (952 bytes without a filter on the
    # built-in digits, 825 with it). One subtraction for the whole image: choosing a filter per row, as
    # Pillow does, would cost a numpy pass per row and candidate for the last ~7%.
    rows[:, 0] = 2
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)  # 8-bit, deflate, adaptive filtering, no interlace
    data = zlib.compress(rows.tobytes(), compress_level)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", data), _IEND))
