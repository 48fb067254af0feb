"""cxrssl: label-efficient chest X-ray analysis.

The data path, in module order: ``io`` (read images and masks) -> ``anatomy`` (rule-based
masks) -> ``data`` (datasets, splits) -> ``nets`` -> ``losses`` -> ``train`` ->
``metrics`` -> ``study`` (report).
"""

from cxrssl.errors import CxrsslError, DatasetError, ImageReadError, SplitLeakError

__version__ = "0.2.0"
__all__ = ["CxrsslError", "DatasetError", "ImageReadError", "SplitLeakError", "__version__"]
