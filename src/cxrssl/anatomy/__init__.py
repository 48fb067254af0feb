"""Rule-based chest anatomy: lung fields, regions, pathology candidates, lung-box crops.

In memory (training pipelines): ``lung_masks`` / ``lung_mask``, ``regions``,
``pathology_map`` (a soft score; ``candidates`` thresholds it), ``lung_box``, ``is_inverted``.
On folders (the ``cxrssl masks`` CLI): ``run_masks``.
"""

from cxrssl.anatomy._image import AnatomyError
from cxrssl.anatomy.crop import crop_box, crop_image, lung_box
from cxrssl.anatomy.engine import KINDS, RunSummary, run_masks
from cxrssl.anatomy.lungs import METHODS, LungMasks, lung_mask, lung_masks
from cxrssl.anatomy.pathology import candidates, pathology_map
from cxrssl.anatomy.polarity import is_inverted
from cxrssl.anatomy.regions import REGION_NAMES, regions

__all__ = [
    "KINDS",
    "METHODS",
    "REGION_NAMES",
    "AnatomyError",
    "LungMasks",
    "RunSummary",
    "candidates",
    "crop_box",
    "crop_image",
    "is_inverted",
    "lung_box",
    "lung_mask",
    "lung_masks",
    "pathology_map",
    "regions",
    "run_masks",
]
