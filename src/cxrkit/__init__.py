"""cxrkit: chest X-ray classification, from a folder of images to an honestly evaluated model and a report.

Importing the package is cheap; heavy modules (torch, MONAI) load when used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
