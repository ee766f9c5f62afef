"""File formats told by their first bytes: one table for the decoder, the DICOM check and the server's answers."""

from __future__ import annotations

DICOM_MAGIC = b"DICM"
MAGIC_OFFSET = 128

# (leading bytes, format name). BMP's two letters also begin plain text ("BMI,..."), so only the longer signatures
# are trusted to say that a file which fails to decode is a damaged image of that kind.
FORMAT_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
_WEAK = {"bmp"}

# A file that opens as one of these is that format, whatever its bytes 128-131 say: a PNG whose text chunk put "DICM"
# there was refused as a DICOM without pixels. TIFF is not among them: TIFF/DICOM dual-personality files are made on
# purpose, and their DICOM part carries the pixel values as acquired.
_NOT_DICOM = tuple(magic for magic, name in FORMAT_MAGIC if name != "tiff")


def is_dicom_bytes(head: bytes) -> bool:
    """Tell whether the first 132 bytes of a file are a DICOM Part 10 preamble and prefix (and not a PNG, JPEG or BMP header)."""
    return head[MAGIC_OFFSET : MAGIC_OFFSET + 4] == DICOM_MAGIC and not head.startswith(_NOT_DICOM)


def sniff_format(head: bytes, strong_only: bool = False) -> str | None:
    """The format ("dicom", "png", "jpeg", "bmp", "tiff") the first bytes announce, or None; ``strong_only`` skips BMP's short mark."""
    if is_dicom_bytes(head):
        return "dicom"
    return next((name for magic, name in FORMAT_MAGIC if head.startswith(magic) and not (strong_only and name in _WEAK)), None)
