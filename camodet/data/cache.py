"""--cache: a pre-resized, pre-decoded copy of a dataset (uint8 .npy, longer side capped
at 1.5x the training size), written once per (files, size) and read on later runs. The
evaluation GT still comes from the original mask, at its original size."""

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import get_context

import cv2
import numpy as np

from .dataset import load_pair
from .io import DataError
from .layouts import Sample

log = logging.getLogger("camodet")
CACHE_VERSION = 1
HEADROOM = 1.5  # zoom-in augmentation still finds detail above the training size


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "camodet")


def cache_key(samples: list[Sample], img_size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}:{img_size}".encode())
    for s in samples:
        for path in (s.image, s.mask):
            st = os.stat(path)
            h.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _write_one(job) -> str | None:
    i, sample, side, folder = job
    try:
        image, mask = load_pair(sample)
    except DataError as e:
        return e.reason
    h, w = mask.shape
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
    np.save(os.path.join(folder, f"{i}.image.npy"), np.ascontiguousarray(image))
    np.save(os.path.join(folder, f"{i}.mask.npy"), np.ascontiguousarray(mask))
    return None


def _write_all(jobs: list, workers: int) -> list[str | None]:
    """_write_one over the jobs, in `workers` forked processes (0: here). A process pool, not
    multiprocessing.Pool: Pool replaces a worker the out-of-memory killer ends and waits for its
    lost task for ever, where the executor stops with BrokenProcessPool, said here in one line."""
    if workers <= 0:
        return [_write_one(j) for j in jobs]
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            return list(pool.map(_write_one, jobs, chunksize=8))
    except BrokenProcessPool:
        raise DataError(
            f"cache: a process writing the cache died (the out-of-memory killer, or killed); nothing was "
            f"kept: run again with fewer --num-workers (they write the cache: {workers} now) or more memory"
        ) from None


def cached_samples(
    samples: list[Sample], img_size: int, cache_dir: str, workers: int, skip_bad_files: bool = False
) -> list[Sample]:
    """Samples that read from the cache (built here if missing); `gt` keeps the original mask."""
    folder = os.path.join(cache_dir, f"{img_size}px-{cache_key(samples, img_size)}")
    index = os.path.join(folder, "index.json")
    if not os.path.isfile(index):
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        side = int(round(img_size * HEADROOM))
        jobs = [(i, s, side, tmp) for i, s in enumerate(samples)]
        log.info(f"cache: writing {len(samples)} pre-resized samples to {folder} (once)")
        try:
            errors = _write_all(jobs, workers)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # no half-written cache is left to be read
            raise
        bad = [e for e in errors if e]
        if bad and not skip_bad_files:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(bad[0], skippable=True)
        for reason in bad:
            log.warning("cache: skipping %s", reason)
        with open(os.path.join(tmp, "index.json"), "w") as fh:
            json.dump({"version": CACHE_VERSION, "img_size": img_size, "ok": [e is None for e in errors]}, fh)
        if os.path.isdir(folder):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    with open(index) as fh:
        ok = json.load(fh)["ok"]
    return [
        replace(
            s,
            image=os.path.join(folder, f"{i}.image.npy"),
            mask=os.path.join(folder, f"{i}.mask.npy"),
            gt=s.mask,
        )
        for i, s in enumerate(samples)
        if ok[i]
    ]
