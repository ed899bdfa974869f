"""Image panels for people: a row of image | ground truth | prediction, as the report and
TensorBoard show them."""

import cv2
import numpy as np

from .metrics import to_uint8


def triptych(image: np.ndarray, gt: np.ndarray, prob: np.ndarray, side: int) -> np.ndarray:
    """One row of a prediction grid: image | ground truth | probability, each side x side, uint8 RGB."""
    tiles = (image, np.repeat(gt[..., None], 3, 2), np.repeat(to_uint8(prob)[..., None], 3, 2))
    return np.concatenate(
        [cv2.resize(np.ascontiguousarray(t), (side, side), interpolation=cv2.INTER_AREA) for t in tiles], 1
    )
