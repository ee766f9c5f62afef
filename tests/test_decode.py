import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.data.decode import ImageDecodeError, fit_square, load_grayscale


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_modes_all_become_same_grayscale(tmp_path):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    grey = _save(Image.fromarray(gray, "L"), tmp_path / "l.png")
    rgb = _save(Image.fromarray(np.stack([gray] * 3, -1), "RGB"), tmp_path / "rgb.png")
    rgba = _save(Image.fromarray(np.dstack([gray] * 3 + [np.full_like(gray, 128)]), "RGBA"), tmp_path / "rgba.png")
    bmp = _save(Image.fromarray(gray, "L"), tmp_path / "x.bmp")
    tif = _save(Image.fromarray(gray, "L"), tmp_path / "x.tiff")
    ref = load_grayscale(grey, 64)
    np.testing.assert_array_equal(ref, gray)
    for p in (rgb, rgba, bmp, tif):
        out = load_grayscale(p, 64)
        assert out.dtype == np.uint8 and out.shape == (64, 64)
        np.testing.assert_array_equal(out, ref)


def test_sixteen_bit_is_stretched_to_full_range(tmp_path):
    # A 12-bit image stored in 16 bits: values 0..4095. Dividing by 65535 would leave it nearly black.
    arr = np.tile(np.linspace(0, 4095, 32).astype(np.uint16), (32, 1))
    p = tmp_path / "i16.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode in ("I;16", "I")
    out = load_grayscale(p, 32)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)


def test_a_float_image_with_one_nan_pixel_is_refused(tmp_path):
    # nanmin/nanmax skipped it and the uint8 cast turned it black: a plausible image with a hole, without a word.
    from cxrkit.data.decode import read_grayscale

    arr = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(arr, "F").save(tmp_path / "ok.tiff")
    assert read_grayscale(tmp_path / "ok.tiff").max() == 255
    arr[5, 7] = np.nan
    Image.fromarray(arr, "F").save(tmp_path / "nan.tiff")
    with pytest.raises(ImageDecodeError, match="non-finite values"):
        read_grayscale(tmp_path / "nan.tiff")


def test_jpeg_decodes(tmp_path):
    p = _save(Image.fromarray(np.tile(np.arange(30, dtype=np.uint8) * 8, (40, 1))), tmp_path / "a.jpg", quality=95)
    out = load_grayscale(p, 20)
    assert out.shape == (20, 20)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_as_viewers_do(tmp_path, suffix):
    # A portrait phone photo of a film is stored on its side with orientation 6 ("turn 90 degrees clockwise to view"):
    # every viewer shows it upright, and it was read on its side, so the model saw another image than the user.
    from cxrkit.audit.features import image_record
    from cxrkit.data.decode import read_grayscale

    upright = np.zeros((60, 40), np.uint8)  # portrait: 60 rows, 40 columns, bright top band (the apices)
    upright[:10] = 255
    stored = np.rot90(upright, k=1).copy()  # 40 x 60, as a phone writes it; viewers turn it clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(Image.fromarray(stored), tmp_path / f"phone{suffix}", exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    got = read_grayscale(p)
    assert got.shape == (60, 40)
    assert got[:10].mean() > 200 and got[20:].mean() < 30  # the bright band on top, as shown
    rec = image_record(p)
    assert (rec["width"], rec["height"]) == (40, 60)
    from cxrkit.data.arrays import pil_to_grayscale

    with Image.open(p) as opened:  # the same file handed over as a PIL image (Run.predict) gives the same pixels
        np.testing.assert_array_equal(pil_to_grayscale(opened), got)
    plain = _save(Image.fromarray(upright), tmp_path / f"plain{suffix}")  # no tag: as stored
    assert read_grayscale(plain).shape == (60, 40)


def test_tiff_orientation_is_pillows_and_a_grayscale_one_is_refused(tmp_path):
    from cxrkit.data.decode import UnsupportedImageError, read_grayscale

    upright = np.zeros((60, 40), np.uint8)
    upright[:10] = 255
    stored = np.rot90(upright, k=1).copy()
    colour = _save(Image.fromarray(np.stack([stored] * 3, -1)), tmp_path / "c.tiff", tiffinfo={274: 6})
    got = read_grayscale(colour)  # Pillow turns a colour TIFF itself: not turned twice
    assert got.shape == (60, 40) and got[:10].mean() > 200 and got[20:].mean() < 30
    gray = _save(Image.fromarray(stored), tmp_path / "g.tiff", tiffinfo={274: 6})
    with pytest.raises(UnsupportedImageError, match="grayscale TIFF with an orientation tag"):  # Pillow scrambles its pixels
        read_grayscale(gray)


def test_truncated_and_non_image_raise_clear_errors(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_grayscale(trunc, 32)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    # The name claims PNG, which cxrkit reads: the error must blame the contents, not the format.
    with pytest.raises(ImageDecodeError, match=r"named \.png, but the contents are not a PNG image \(a damaged file, or another kind"):
        load_grayscale(text, 32)
    with pytest.raises(ImageDecodeError, match=r"^not a supported image \(PNG, JPEG, BMP, TIFF or DICOM\)$"):
        load_grayscale(text.rename(tmp_path / "notes.txt"), 32)
    with pytest.raises(ImageDecodeError, match=r"^not a supported image \(PNG"):
        load_grayscale(io.BytesIO(b"not an image either"), 32)  # bytes and uploads have no name to go by
    with pytest.raises(ImageDecodeError, match="not found"):
        load_grayscale(tmp_path / "missing.png", 32)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError):
        load_grayscale(empty, 32)


def test_a_png_whose_pixel_data_is_damaged_is_refused_not_decoded_in_part(tmp_path):
    import struct

    from cxrkit.data.arrays import pil_to_grayscale
    from cxrkit.data.decode import read_grayscale

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)).save(good)
    data = bytearray(good.read_bytes())
    i = data.find(b"IDAT")
    n = struct.unpack(">I", data[i - 4:i])[0]
    data[i + 4 + int(n * 0.9)] ^= 0xFF  # one byte late in the stream: Pillow filled 93 rows, then failed inside getexif
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        read_grayscale(bad)
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        load_grayscale(bytes(data), 32)
    with pytest.raises(ValueError, match="cannot decode image"):  # Run.predict(Image.open(path)): as the path is answered
        pil_to_grayscale(Image.open(bad))
    assert read_grayscale(good).shape == (96, 96)


def test_pad_keeps_aspect_and_squash_fills():
    tall = np.full((100, 50), 200, np.uint8)
    padded = fit_square(tall, 40, "pad")
    # 100x50 -> 40x20 centred: columns 0-9 and 30-39 are black padding.
    assert padded[:, :9].max() == 0 and padded[:, 31:].max() == 0
    assert padded[:, 12:28].min() == 200
    squashed = fit_square(tall, 40, "squash")
    assert squashed.min() == 200
    with pytest.raises(ValueError):
        fit_square(tall, 40, "crop")


def test_a_png_is_a_png_whatever_its_bytes_128_to_131_say_and_a_damaged_header_is_damaged(tmp_path):
    from PIL import PngImagePlugin

    from cxrkit.data.decode import UnsupportedImageError, is_image_file, read_grayscale

    a = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("c", "x" * 85 + "DICM" + "x" * 40)  # the text starts at byte 43: "DICM" lands at 128, DICOM's marker
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", pnginfo=info)
    data = buf.getvalue()
    assert data[128:132] == b"DICM"
    assert np.array_equal(read_grayscale(data), a)  # it was refused as "DICOM file has no image"
    (tmp_path / "IM0001").write_bytes(data)
    assert is_image_file(tmp_path / "IM0001")
    bad = bytearray(data)
    bad[30] ^= 0xFF  # the IHDR chunk's CRC: a damaged PNG, not another kind of file
    with pytest.raises(ImageDecodeError, match="starts as a PNG but its header is damaged") as exc:
        read_grayscale(bytes(bad))
    assert not isinstance(exc.value, UnsupportedImageError)


def test_one_magic_table_decides_format_for_decoder_dicom_check_and_server():
    from cxrkit.data.magic import sniff_format

    dicm = b"\x00" * 128 + b"DICM"
    assert sniff_format(dicm) == "dicom"
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + dicm[8:]) == "png"  # a PNG's text chunk cannot make it a DICOM
    assert sniff_format(b"II*\x00" + dicm[4:]) == "dicom"  # TIFF/DICOM dual-personality files are read as DICOM
    assert sniff_format(b"BMI,age,sex\n") == "bmp" and sniff_format(b"BMI,age,sex\n", strong_only=True) is None
    assert sniff_format(b"%PDF-1.4") is None
