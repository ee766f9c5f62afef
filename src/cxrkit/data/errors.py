"""Why an image could not be read: the exceptions every decoder raises (files, DICOM, uploads, arrays)."""


class ImageDecodeError(ValueError):
    """Raised when a file cannot be decoded as an image (missing, empty, truncated or corrupt)."""


class UnsupportedImageError(ImageDecodeError):
    """Raised when a file is readable but not a supported image: another format, or a DICOM file without a radiograph."""


class ImageTooLargeError(ImageDecodeError):
    """Raised when an image has more pixels than allowed (decompression-bomb guard)."""


class UnusableImageError(ImageDecodeError):
    """Raised when an image decodes but holds nothing a model can read: one grey level, or a side of a few pixels."""
