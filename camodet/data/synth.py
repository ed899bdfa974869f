"""Synthetic camouflage: an object whose texture comes from the same family and
palette as its background, differing only in orientation and scale of the
pattern. Both textures are rank-normalised to the same grey-level histogram,
so no colour or brightness threshold separates them; a model must learn the
texture boundary. Written in the COD10K-v3 layout, deterministic per seed."""

import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from PIL import Image

from .io import DataError


def oriented_texture(
    rng: np.random.Generator, h: int, w: int, angle: float, freq: float, bandwidth: float = 0.35
) -> np.ndarray:
    """Band-pass noise with energy around spatial frequency `freq` (cycles/pixel)
    in direction `angle`; values rank-normalised to a uniform [0, 1]."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    u = fx * np.cos(angle) + fy * np.sin(angle)
    v = -fx * np.sin(angle) + fy * np.cos(angle)
    spread = freq * bandwidth
    gain = np.exp(-((np.abs(u) - freq) ** 2 + (v / 0.5) ** 2) / (2 * spread**2))
    noise = rng.standard_normal((h, w))
    field = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=(h, w))
    ranks = field.ravel().argsort().argsort().reshape(h, w)
    return ranks / (h * w - 1)


def blob_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth, irregular closed shape (radial Fourier series), elongated and rotated."""
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    radius = rng.uniform(0.14, 0.28) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    stretch, rot = rng.uniform(1.0, 1.8), rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    ax = (dx * np.cos(rot) + dy * np.sin(rot)) / stretch
    ay = -dx * np.sin(rot) + dy * np.cos(rot)
    phi, r = np.arctan2(ay, ax), np.hypot(ax, ay)
    boundary = np.ones_like(phi)
    for k in range(2, 6):
        boundary += rng.uniform(0, 0.25 / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    return r < radius * boundary


def palette(rng: np.random.Generator) -> np.ndarray:
    """3 related colours (one hue family, varied lightness) as a 256-entry colour map."""
    base = rng.uniform(40, 200, size=3)
    stops = np.stack([np.clip(base * f + rng.normal(0, 12, 3), 0, 255) for f in (0.45, 0.9, 1.35)])
    x = np.linspace(0, 1, 256)
    return np.stack([np.interp(x, [0, 0.5, 1], stops[:, c]) for c in range(3)], axis=1)


def make_sample(rng: np.random.Generator, h: int, w: int, camouflaged: bool = True):
    """(RGB uint8 image, uint8 mask 0/255)."""
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.06, 0.14)
    values = oriented_texture(rng, h, w, angle, freq)
    mask = np.zeros((h, w), bool)
    if camouflaged:
        mask = blob_mask(rng, h, w)
        obj = oriented_texture(
            rng, h, w, angle + rng.uniform(np.pi / 3, 2 * np.pi / 3), freq * rng.uniform(1.3, 1.8)
        )
        values = np.where(mask, obj, values)
    colours = palette(rng)[np.clip((values * 255).astype(int), 0, 255)]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    light = 1 + 0.15 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
    image = np.clip(colours * light[..., None] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


def _write_sample(
    root: str, split: str, i: int, seed: int, noncam_every: int, size_range: tuple[int, int]
) -> None:
    # each sample has its own generator, so the files do not depend on the order or process they are made in
    rng = np.random.default_rng([seed, 0 if split == "Train" else 1, i])
    h, w = (int(rng.integers(size_range[0], size_range[1] + 1)) for _ in range(2))
    noncam = noncam_every > 0 and i % noncam_every == noncam_every - 1
    image, mask = make_sample(rng, h, w, camouflaged=not noncam)
    kind = "NonCAM-5-Background-1-Synthetic" if noncam else "CAM-1-Synthetic-1-Blob"
    stem = f"COD10K-{kind}-{i + 1}"
    Image.fromarray(image).save(os.path.join(root, split, "Image", stem + ".jpg"), quality=92)
    Image.fromarray(mask).save(os.path.join(root, split, "GT_Object", stem + ".png"))


def write_dataset(
    root: str,
    train: int,
    test: int,
    seed: int = 0,
    noncam_every: int = 10,
    size_range: tuple[int, int] = (160, 320),
    workers: int = 1,
) -> dict:
    """COD10K-v3 layout: Train|Test/Image/*.jpg and Train|Test/GT_Object/*.png.
    Every `noncam_every`-th image is a NonCAM background with an empty mask.
    `workers` > 1 generates in that many processes; the files are the same."""
    jobs = [
        (root, split, i, seed, noncam_every, size_range)
        for split, n in (("Train", train), ("Test", test))
        for i in range(n)
    ]
    for split in ("Train", "Test"):
        for sub in ("Image", "GT_Object"):
            os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    if workers > 1:
        try:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_sample, *zip(*jobs), chunksize=4))
        except BrokenProcessPool:
            raise DataError(
                f"synth: a process writing images died (the out-of-memory killer, or killed); the "
                f"images written so far in {root} are whole: run again (fewer --workers: {workers} now)"
            ) from None
    else:
        for job in jobs:
            _write_sample(*job)
    return {"root": root, "train": train, "test": test, "seed": seed}
