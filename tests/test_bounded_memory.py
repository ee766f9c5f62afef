"""Decoding and serving stay within bounded memory: row-block stretching of wide images, a cap on decodes at once, validated limits."""

from __future__ import annotations

import io
import threading
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main
from cxrkit.data.decode import read_grayscale


def _old_stretch(arr: np.ndarray) -> np.ndarray:
    """The whole-array formula the row blocks must reproduce."""
    a = arr.astype(np.float64)
    lo, hi = a.min(), a.max()
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def test_16_bit_image_is_stretched_in_row_blocks_with_the_same_values():
    rng = np.random.default_rng(0)
    arr = rng.integers(300, 4000, size=(700, 530), dtype=np.uint16)  # 12-bit values, rows not a multiple of the block
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    np.testing.assert_array_equal(read_grayscale(buf.getvalue()), _old_stretch(arr))
    tif = io.BytesIO()
    Image.fromarray(arr.astype(np.float32) / 7).save(tif, format="TIFF")  # mode F
    np.testing.assert_array_equal(read_grayscale(tif.getvalue()), _old_stretch(arr.astype(np.float32) / 7))


def test_large_16_bit_image_never_becomes_a_full_size_float_array():
    side = 3000  # 9 MP: a full-size float64 copy alone is 72 MB
    arr = (np.add.outer(np.arange(side), np.arange(side)) * 7).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    tracemalloc.start()
    try:
        out = read_grayscale(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (side, side) and out.max() == 255 and out.min() == 0
    assert peak < 40e6, f"numpy/Python peak {peak / 1e6:.0f} MB while decoding a 9 MP 16-bit PNG"


def test_decodes_at_once_are_capped_across_requests(tiny_run, monkeypatch):
    pytest.importorskip("fastapi")
    from cxrkit.run import Run
    from cxrkit.serve.app import Limits, Service

    service = Service(Run.load(tiny_run, engine="torch"), Limits(max_decodes=1))
    load = service.run.preprocessing.load
    busy, most, guard = 0, 0, threading.Lock()

    def slow_load(data, max_pixels):
        nonlocal busy, most
        with guard:
            busy += 1
            most = max(most, busy)
        time.sleep(0.05)
        try:
            return load(data, max_pixels=max_pixels)
        finally:
            with guard:
                busy -= 1

    monkeypatch.setattr(type(service.run.preprocessing), "load", lambda self, data, max_pixels: slow_load(data, max_pixels))
    buf = io.BytesIO()
    Image.fromarray(np.tile(np.arange(60, 100, dtype=np.uint8), (40, 1))).save(buf, format="PNG")  # a blank image is refused
    png = buf.getvalue()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(service.predict([("a.png", png), ("b.png", io.BytesIO(png))], False, False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1 and len(answers) == 3  # every request answered, one decode at a time


@pytest.mark.parametrize("field, value", [("max_files", 0), ("max_decodes", 0), ("max_pixels", -1), ("max_file_bytes", 10**12)])
def test_limits_are_validated(field, value):
    pytest.importorskip("fastapi")
    from cxrkit.serve.app import Limits

    with pytest.raises(ValueError, match=field):
        Limits(**{field: value})


@pytest.mark.parametrize("argv", [["train", "DATA", "--image-size", "100000"], ["train", "DATA", "--batch-size", "0"],
                                  ["predict", "RUN", "x.png", "--batch-size", "100000"], ["serve", "RUN", "--max-files", "0"],
                                  ["serve", "RUN", "--max-decodes", "x"]])
def test_cli_refuses_unbounded_sizes(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.splitlines()[-1]
    assert exc.value.code == 2 and ("outside" in err or "not a whole number" in err)


def test_large_jpeg_is_decoded_at_a_reduced_dct_scale():
    from cxrkit.data.decode import fit_square, load_grayscale

    base = np.add.outer(np.linspace(0, 200, 5000), np.linspace(0, 50, 7000)).astype(np.uint8)  # 35 MP, over the draft threshold
    buf = io.BytesIO()
    Image.fromarray(np.stack([base] * 3, -1)).save(buf, format="JPEG", quality=90)
    big = buf.getvalue()
    assert read_grayscale(big).shape == (5000, 7000)
    assert read_grayscale(big, min_side=896).shape == (1250, 1750)  # 1/4: the smallest scale keeping >= 896 px
    diff = np.abs(load_grayscale(big, 224).astype(int) - fit_square(read_grayscale(big), 224))
    assert diff.max() <= 2 and diff.mean() < 0.5
    small = io.BytesIO()
    Image.fromarray(base[:2000, :2000]).save(small, format="JPEG", quality=90)  # 4 MP: decoded in full as before
    np.testing.assert_array_equal(load_grayscale(small.getvalue(), 224), fit_square(read_grayscale(small.getvalue()), 224))
