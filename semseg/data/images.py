"""Reading a dataset's files: images as RGB arrays, labels as train ids; errors that name the file."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """Data that cannot be used as it is; the message names the file (and line) at fault."""


def read_image(path: str) -> np.ndarray:
    """An HxWx3 RGB float32 image on the 0-255 scale."""
    # Pixels as stored: a label has no EXIF orientation to follow, so its image must not turn either.
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DatasetError(f"{path}: cannot read the image (missing, truncated or not an image file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32)


def read_label(path: str) -> np.ndarray:
    """An HxW uint8 label image of train ids.

    Palette PNGs (VOC's SegmentationClass) give their indices, not their colours; 16-bit and
    grey-as-RGB labels are accepted when their values fit in 0..255. Read with Pillow, because
    OpenCV turns a palette image into colours.
    """
    try:
        with Image.open(path) as handle:
            mode = handle.mode
            label = np.array(handle)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: cannot read the label ({error})") from None
    if label.ndim == 3:  # RGB, RGBA, LA, PA: the colour channels must agree; an alpha channel is ignored
        colours = label[:, :, : 3 if mode in ("RGB", "RGBA") else 1]
        if not all(np.array_equal(colours[:, :, 0], colours[:, :, i]) for i in range(1, colours.shape[2])):
            raise DatasetError(
                f"{path}: the label is a {mode} image with different colour channels; labels must be single-channel "
                "or palette PNGs of train ids (is this a colour-coded label?)"
            )
        label = colours[:, :, 0]
    if label.dtype != np.uint8:
        if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
            raise DatasetError(f"{path}: label values must be integers, the {mode} image holds fractions")
        if label.size and (label.min() < 0 or label.max() > 255):
            raise DatasetError(
                f"{path}: label values must fit in 0..255, found {label.min():g}..{label.max():g} ({mode} image)"
            )
        label = label.astype(np.uint8)
    return label
