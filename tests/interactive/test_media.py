"""kinema4d.interactive.media.load_image: the one image loader (Simulator and Kinema4DEnv both use it)."""

import imageio.v2 as imageio
import numpy as np
import pytest

from kinema4d.interactive.media import load_image


def test_load_image_rules(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert load_image(rgb) is not rgb and np.array_equal(load_image(rgb), rgb)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 9, np.uint8)], axis=-1)
    np.testing.assert_array_equal(load_image(rgba), rgb)  # alpha dropped
    grey = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(load_image(grey)[0, 1], [128, 128, 128])
    # float in [0, 1]: x 255, rounded (0.5 -> 127.5 -> 128: numpy rounds half to even, 128 is even)
    np.testing.assert_array_equal(load_image(np.array([[[0.0, 0.5, 1.0]]]))[0, 0], [0, 128, 255])
    path = tmp_path / "im.png"
    imageio.imwrite(path, rgba)
    np.testing.assert_array_equal(load_image(path), rgb)
    np.testing.assert_array_equal(load_image(str(path)), rgb)


def test_load_image_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="initial image file not found"):
        load_image(tmp_path / "missing.png", "initial image")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(bad)
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) RGB, got shape \(2, 3, 2\)"):
        load_image(np.zeros((2, 3, 2), np.uint8))
    with pytest.raises(ValueError, match="must be uint8 RGB.*uint16"):
        load_image(np.zeros((2, 3, 3), np.uint16))
    with pytest.raises(ValueError, match=r"float image must hold finite values in \[0, 1\]"):
        load_image(np.full((2, 3, 3), 200.0))  # 0-255 floats are refused, not clipped
    with pytest.raises(ValueError, match="finite"):
        load_image(np.full((2, 3, 3), np.nan))
