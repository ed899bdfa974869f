"""Joint image+mask augmentation as one affine warp (crop, scale, rotation,
flip together), then colour jitter. Pure functions of an explicit RNG, so an
augmented sample is reproducible from (seed, epoch, index)."""

import math

import cv2
import numpy as np

from .normalization import IMAGENET, ColourMap, Normalization

# ImageNet statistics on the 0..255 scale, for code written before normalisation became the
# backbone's own; new code takes a Normalization.
MEAN = np.array(IMAGENET.mean, dtype=np.float32) * 255.0
STD = np.array(IMAGENET.std, dtype=np.float32) * 255.0


def resize(image: np.ndarray, size: int, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=interpolation)


def random_affine(
    rng: np.random.Generator, w: int, h: int, size: int, scale=(0.6, 1.0), max_rotate: float = 15.0
) -> np.ndarray:
    """2x3 matrix mapping a random crop (area fraction in `scale`, aspect jitter,
    rotation, horizontal flip) of a w x h image onto a size x size output."""
    area = rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, w * math.sqrt(area * aspect))
    ch = min(h, h * math.sqrt(area / aspect))
    cx = rng.uniform(cw / 2, w - cw / 2)
    cy = rng.uniform(ch / 2, h - ch / 2)
    angle = rng.uniform(-max_rotate, max_rotate) if rng.random() < 0.5 else 0.0
    flip = -1.0 if rng.random() < 0.5 else 1.0
    # output pixel -> centred unit square -> rotate/flip -> crop in the source
    sx, sy = cw / size, ch / size
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lin = rot @ np.diag([sx * flip, sy])
    offset = np.array([cx, cy]) - lin @ np.array([size / 2, size / 2])
    src_from_dst = np.hstack([lin, offset[:, None]])
    return cv2.invertAffineTransform(src_from_dst)


def colour_jitter(rng: np.random.Generator, image: np.ndarray, strength: float = 0.2) -> ColourMap:
    """Random brightness, contrast and saturation as one linear map of the pixels (see
    ColourMap), applied together with the normalisation by Normalization.apply. Per channel it
    is the textbook sequence, clipped to 0..255 once at the end:
        grey = mean over channels; x = grey + (x - grey) * saturation
        x = (x - mean(x)) * contrast + mean(x); x = x * brightness
    (saturation leaves the image's overall mean unchanged, so mean(x) is the input's)."""
    brightness = rng.uniform(1 - strength, 1 + strength)
    contrast = rng.uniform(1 - strength, 1 + strength)
    saturation = rng.uniform(1 - strength, 1 + strength)
    mean = float(image.mean())
    matrix = brightness * contrast * (saturation * np.eye(3) + (1 - saturation) / 3 * np.ones((3, 3)))
    return ColourMap(matrix, np.full(3, brightness * (1 - contrast) * mean))


def train_transform(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, size: int, augment: str = "full"
):
    """(warped uint8 image, warped mask, its colour jitter): the jitter is applied with the
    normalisation, `norm.apply(image, colour)`, in one pass over the pixels. augment "flip": the
    whole image resized and flipped at random, no jitter (None): a short run on camouflage, where
    crops change the object's scale and colour is the cue, learns more from the plain view."""
    if augment == "flip":
        image, mask = resize(image, size), resize(mask, size)
        if rng.random() < 0.5:
            image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        return image, mask, None
    h, w = mask.shape
    m = random_affine(rng, w, h, size)
    image = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    mask = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return image, mask, colour_jitter(rng, image)


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
    return resize(image, size)


def normalise(image: np.ndarray, norm: Normalization = IMAGENET) -> np.ndarray:
    """HxWx3 (uint8 or float 0..255) -> 3xHxW float32 with the backbone's statistics."""
    return norm.apply(image)
