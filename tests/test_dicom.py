"""DICOM reading: rescale, windowing, MONOCHROME1, 16-bit, and clear errors for DICOM files that are not radiographs."""

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from cxrkit.data.decode import ImageDecodeError, ImageTooLargeError, UnsupportedImageError, is_image_file, load_grayscale, read_grayscale

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: a DICOM file with no image


def write_dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", bits: int = 16,
                sop_class: str = CR_STORAGE, syntax=ExplicitVRLittleEndian, **tags) -> Path:
    """A minimal Part 10 file: preamble, DICM, file meta, and (optionally) unsigned pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR" if pixels is not None else "SR"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits if bits == 8 else 12, (bits if bits == 8 else 12) - 1, 0
        raw = pixels.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
        ds.PixelData = encapsulate([raw]) if syntax.is_compressed else raw
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(n: int = 32, top: int = 4095) -> np.ndarray:
    return np.tile(np.linspace(0, top, n).round().astype(np.uint16), (n, 1))


def test_twelve_bit_dicom_is_stretched_and_sniffed_by_content(tmp_path):
    p = write_dicom(tmp_path / "scan.dcm", ramp())
    out = load_grayscale(p, 32)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) > 0)
    # Content, not the name, decides: the same bytes under another extension, and as bytes.
    renamed = tmp_path / "scan.png"
    renamed.write_bytes(p.read_bytes())
    np.testing.assert_array_equal(load_grayscale(renamed, 32), out)
    np.testing.assert_array_equal(load_grayscale(p.read_bytes(), 32), out)
    assert is_image_file(p)


def test_monochrome1_is_inverted(tmp_path):
    m2 = read_grayscale(write_dicom(tmp_path / "m2.dcm", ramp()))
    m1 = read_grayscale(write_dicom(tmp_path / "m1.dcm", ramp(), photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1, 255 - m2)
    assert m1[0, 0] == 255 and m1[0, -1] == 0  # stored 0 is white in MONOCHROME1


def test_window_centre_width_saturates_outside_the_window(tmp_path):
    p = write_dicom(tmp_path / "w.dcm", ramp(64), WindowCenter=2000, WindowWidth=1000)
    out = read_grayscale(p)
    values = ramp(64)[0]
    assert np.all(out[0, values < 1450] == 0) and np.all(out[0, values > 2550] == 255)
    inside = (values > 1550) & (values < 2450)
    assert inside.sum() > 5 and np.all((out[0, inside] > 0) & (out[0, inside] < 255))
    assert np.all(np.diff(out[0, inside].astype(int)) > 0)


def test_rescale_slope_and_intercept_keep_the_window_in_output_units(tmp_path):
    # Stored 0..4095 with slope 2, intercept -1000 -> -1000..7190; the window 2000-3000 is in those units.
    p = write_dicom(tmp_path / "r.dcm", ramp(64), RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=2500, WindowWidth=1000)
    out = read_grayscale(p)
    real = ramp(64)[0] * 2.0 - 1000
    assert np.all(out[0, real < 1950] == 0) and np.all(out[0, real > 3050] == 255)


def test_eight_bit_dicom_keeps_its_values(tmp_path):
    pixels = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    out = read_grayscale(write_dicom(tmp_path / "b.dcm", pixels, bits=8), 10**8)
    np.testing.assert_array_equal(out, pixels)  # as an 8-bit PNG of them: 0..248 was stretched to 0..255
    windowed = read_grayscale(write_dicom(tmp_path / "w.dcm", pixels, bits=8, WindowCenter=128, WindowWidth=256), 10**8)
    assert windowed.min() == 0 and windowed.max() == 255  # a window is a display mapping: stretched as before


def test_non_image_dicom_is_a_clear_error(tmp_path):
    p = write_dicom(tmp_path / "report.dcm", None, sop_class=SR_STORAGE)
    with pytest.raises(UnsupportedImageError, match="no pixel data"):
        load_grayscale(p, 32)


def test_compressed_pixel_data_without_a_decoder_is_a_decode_error(tmp_path):
    p = write_dicom(tmp_path / "j2k.dcm", ramp(), syntax=JPEG2000Lossless)
    # The tag says JPEG 2000 but the bytes are raw: whichever decoder is installed must fail cleanly.
    with pytest.raises(ImageDecodeError, match="DICOM pixel data"):
        load_grayscale(p, 32)


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    p = write_dicom(tmp_path / "big.dcm", ramp(64))
    with pytest.raises(ImageTooLargeError, match="too large"):
        read_grayscale(p, max_pixels=64 * 64 - 1)


def test_truncated_and_non_image_files(tmp_path):
    p = write_dicom(tmp_path / "t.dcm", ramp())
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageDecodeError):
        load_grayscale(cut, 32)
    with pytest.raises(UnsupportedImageError, match="not a supported image"):
        load_grayscale(b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"x" * 200, 32)
    with pytest.raises(ImageDecodeError, match="empty"):
        load_grayscale(b"", 32)


def test_damaged_headers_are_one_files_decode_error(tmp_path):
    # Fuzzed uploads raised errors the readers did not expect (Pillow's TypeError "Missing dimensions", pydicom's
    # NotImplementedError for an unknown value representation): `predict FOLDER` stopped at that one file with
    # "unexpected TypeError ... a bug in cxrkit" instead of listing it as unreadable.
    import io
    import struct

    from PIL import Image

    buf = io.BytesIO()
    frames = [Image.fromarray(np.zeros((32, 32), np.uint8))] * 2  # over 16 px a side: refused for its damage, not its size
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    tif = bytearray(buf.getvalue())
    first = struct.unpack("<I", tif[4:8])[0]
    n = struct.unpack("<H", tif[first : first + 2])[0]
    second = struct.unpack("<I", tif[first + 2 + 12 * n : first + 6 + 12 * n])[0]
    assert struct.unpack("<H", tif[second + 2 : second + 4])[0] == 256  # the second frame's first entry is ImageWidth
    tif[second + 2 : second + 4] = struct.pack("<H", 0x7777)  # now an unknown tag: that frame has no width
    (tmp_path / "nodim.tif").write_bytes(bytes(tif))
    with pytest.raises(ImageDecodeError, match=r"damaged file \(TypeError: Missing dimensions\)"):
        read_grayscale(tmp_path / "nodim.tif")
    dcm = bytearray(write_dicom(tmp_path / "ok.dcm", ramp()).read_bytes())
    at = dcm.find(b"UL", 132)  # the file meta's group length, (0002,0000) UL
    dcm[at : at + 2] = b"GL"
    (tmp_path / "vr.dcm").write_bytes(bytes(dcm))
    with pytest.raises(ImageDecodeError, match=r"damaged header \(NotImplementedError: Unknown Value Representation 'GL'"):
        read_grayscale(tmp_path / "vr.dcm")


def test_headers_that_do_not_describe_the_pixels_are_refused(tmp_path):
    # Each of these was decoded into a plausible image and classified: part of the image (Rows too small), 16-bit data read
    # as 8-bit, an empty pixel element ("len() of NoneType"), and display settings that make every pixel one grey.
    image = ramp(32)
    too_few_rows = write_dicom(tmp_path / "rows.dcm", image, Rows=16)
    with pytest.raises(ImageDecodeError, match="pixel data holds 2,048 bytes, but 32x16 pixels .* need 1,024: the header does not describe"):
        read_grayscale(too_few_rows)
    eight = write_dicom(tmp_path / "bits.dcm", image, BitsAllocated=8, BitsStored=8, HighBit=7)
    with pytest.raises(ImageDecodeError, match="at 8 bits need 1,024"):
        read_grayscale(eight)
    empty = write_dicom(tmp_path / "empty.dcm", image, PixelData=b"")
    with pytest.raises(UnsupportedImageError, match="pixel data element is empty"):
        read_grayscale(empty)
    flat = write_dicom(tmp_path / "slope.dcm", image, RescaleSlope=0, RescaleIntercept=0)
    with pytest.raises(ImageDecodeError, match="rescale slope 0.* one grey level"):
        read_grayscale(flat)
    dark = write_dicom(tmp_path / "window.dcm", image, WindowCenter=100000, WindowWidth=10)
    with pytest.raises(ImageDecodeError, match="one grey level"):
        read_grayscale(dark)
    assert read_grayscale(write_dicom(tmp_path / "ok.dcm", image)).shape == (32, 32)
    odd = ramp(31)[:31, :31]  # an odd byte count of 8-bit data is padded by one byte: still its own size
    assert read_grayscale(write_dicom(tmp_path / "odd.dcm", odd.astype(np.uint8) // 16, bits=8)).shape == (31, 31)


def test_a_dicom_whose_header_is_junk_is_called_damaged_not_answered_with_pydicoms_text():
    import tempfile

    with tempfile.SpooledTemporaryFile() as f:  # as the server holds an upload
        f.write(b"\0" * 128 + b"DICM" + b"\xff" * 500)
        f.seek(0)
        with pytest.raises(ImageDecodeError, match=r"^cannot read DICOM file: damaged header \(pydicom: TypeError"):
            read_grayscale(f)


def test_the_audit_reads_an_all_dicom_dataset_as_training_does(tmp_path):
    # The audit opened files with Pillow alone: every DICOM was "cannot decode", and the shortcut probe then failed on no
    # records at all ("unexpected TypeError" from audit and train), while training itself read the same files.
    from cxrkit.audit.dataset_audit import audit_dataset
    from cxrkit.audit.features import image_record

    rng = np.random.default_rng(0)
    for cls, top in (("healthy", 3000), ("tb", 4095)):
        for i in range(12):
            write_dicom((tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True) or tmp_path / "data" / cls / f"{i}.dcm",
                        rng.integers(0, top, (32, 32)).astype(np.uint16))
    rec = image_record(tmp_path / "data" / "tb" / "0.dcm")
    assert rec["error"] is None and (rec["format"], rec["mode"], rec["bit_depth"], rec["width"]) == ("DICOM", "I;16", 12, 32)
    np.testing.assert_allclose(rec["mean"], read_grayscale(tmp_path / "data" / "tb" / "0.dcm", 10**8).mean() / 255, atol=0.01)
    audit = audit_dataset(tmp_path / "data", progress=False)
    assert audit["n_decoded"] == 24 and audit["corrupt"] == [] and audit["shortcut_probe"]["auc"] is not None


def test_padding_presentation_lut_and_frames_are_read_as_viewers_read_them(tmp_path):
    # Padding at 65535 was stretched with the image (the anatomy came out 241-255), a Presentation LUT Shape INVERSE was
    # ignored (the image read as its own negative), and a two-frame file was classified by its first frame without a word.
    img = ramp(top=4000)
    padded = img.copy()
    padded[:, :6] = 65535
    out = read_grayscale(write_dicom(tmp_path / "pad.dcm", padded, PixelPaddingValue=65535), 10**8)
    np.testing.assert_array_equal(out[:, 6:], read_grayscale(write_dicom(tmp_path / "nopad.dcm", img[:, 6:]), 10**8))
    assert (out[:, :6] == 0).all()
    inverse = read_grayscale(write_dicom(tmp_path / "inv.dcm", img, PresentationLUTShape="INVERSE"), 10**8)
    np.testing.assert_array_equal(inverse, 255 - read_grayscale(write_dicom(tmp_path / "id.dcm", img), 10**8))
    mono1 = read_grayscale(write_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1", PresentationLUTShape="INVERSE"), 10**8)
    np.testing.assert_array_equal(mono1, inverse)  # INVERSE is MONOCHROME1's usual companion, not a second inversion
    two = np.concatenate([img, img])
    path = write_dicom(tmp_path / "two.dcm", two, NumberOfFrames=2)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows = 32
    ds.save_as(path)
    with pytest.raises(UnsupportedImageError, match="DICOM file holds 2 frames"):
        read_grayscale(path, 10**8)
