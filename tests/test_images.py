"""Images of every mode decode to the configured channels with the right values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmdistill.data.images import load_image


def _save(tmp_path, array, mode=None, name="x.png"):
    path = tmp_path / name
    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    img.save(path)
    return path


def test_gray_8bit_to_three_channels(tmp_path):
    path = _save(tmp_path, np.full((6, 6), 51, np.uint8))
    out = load_image(path, channels=3, size=6)
    assert out.shape == (3, 6, 6)
    assert np.allclose(out.numpy(), 51 / 255, atol=1e-6)


def test_rgb_to_one_channel_uses_luminance(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[..., 0] = 255
    out = load_image(_save(tmp_path, arr), channels=1, size=4)
    assert out.shape == (1, 4, 4)
    assert np.allclose(out.numpy(), 0.299, atol=1e-3)


def test_rgba_is_composited_onto_black(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., :3] = 200
    arr[:2, ..., 3] = 255  # top half opaque, bottom half transparent
    out = load_image(_save(tmp_path, arr), channels=3, size=4).numpy()
    assert np.allclose(out[:, :2], 200 / 255, atol=1e-6)
    assert np.allclose(out[:, 2:], 0.0)


def test_rgba_kept_with_four_channels(tmp_path):
    arr = np.full((4, 4, 4), 128, np.uint8)
    out = load_image(_save(tmp_path, arr), channels=4, size=4)
    assert out.shape == (4, 4, 4)


def test_sixteen_bit_gray_keeps_its_range(tmp_path):
    arr = np.full((5, 5), 65535 // 4, np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, channels=3, size=5)
    assert out.shape == (3, 5, 5)
    assert np.allclose(out.numpy(), 0.25, atol=1e-3)  # not clipped to 1.0 as a naive 8-bit read would


def test_palette_image(tmp_path):
    img = Image.new("P", (4, 4))
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    path = tmp_path / "p.png"
    img.save(path)
    out = load_image(path, channels=3, size=4).numpy()
    assert out[1, 0, 0] == pytest.approx(1.0) and out[0, 0, 0] == 0.0


def test_resized_to_configured_size(tmp_path):
    path = _save(tmp_path, np.zeros((20, 10, 3), np.uint8))
    assert load_image(path, channels=3, size=8).shape == (3, 8, 8)
