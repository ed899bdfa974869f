"""The images a model gets most wrong: the K lowest per-image IoUs of an evaluation, kept as
they stream past (K maps in memory, whatever the test set's size), shown as a panel of
image | ground truth | prediction with each row's name and IoU, and listed as a table."""

import heapq
import itertools
import json
import os

import cv2
import numpy as np

from ..data.io import read_image, read_mask
from ..data.layouts import Sample
from ..errors import ConfigError
from .panels import triptych

CAPTION = 22  # pixels of the caption strip above each row


class WorstImages:
    """`offer` every scored image; `items()` are the k with the lowest IoU, worst first (ties:
    the first offered first)."""

    def __init__(self, k: int):
        if k < 1:
            raise ConfigError(f"--worst {k}: give how many images to show, at least 1")
        self.k = k
        self._heap: list = []  # max-heap on IoU through negation: the best of the worst on top
        self._order = itertools.count()

    def offer(self, iou: float, row: str, sample: Sample, pred: np.ndarray) -> None:
        """pred: the uint8 map that was scored, at the ground truth's size."""
        entry = (-iou, -next(self._order), row, sample, pred)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list[tuple[float, str, Sample, np.ndarray]]:
        """[(IoU, row, sample, map)], lowest IoU first."""
        ordered = sorted(self._heap, key=lambda e: (-e[0], -e[1]))
        return [(-e[0], e[2], e[3], e[4]) for e in ordered]

    def table(self) -> str:
        lines = ["| rank | dataset | image | IoU |", "|---|---|---|---|"]
        for i, (iou, row, s, _) in enumerate(self.items(), 1):
            lines.append(f"| {i} | {row} | {s.name} | {iou:.4f} |")
        return "\n".join(lines)

    def panel(self, side: int = 224) -> np.ndarray:
        """uint8 RGB: one captioned row of image | GT | prediction per image, worst on top."""
        rows = []
        for iou, row, s, pred in self.items():
            tiles = triptych(read_image(s.image), read_mask(s.gt or s.mask), pred / 255.0, side)
            strip = np.full((CAPTION, tiles.shape[1], 3), 255, np.uint8)
            text = f"{row} / {s.name}   IoU {iou:.3f}"
            font = cv2.FONT_HERSHEY_SIMPLEX
            cv2.putText(strip, text, (4, CAPTION - 6), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            rows += [strip, tiles]
        return np.concatenate(rows, 0)

    def save(self, out_dir: str, side: int = 224) -> str:
        """OUT/worst.png (the panel) and OUT/worst.json (rank, dataset, image, IoU); returns the
        PNG's path."""
        from PIL import Image

        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "worst.png")
        Image.fromarray(self.panel(side)).save(path)
        listing = [
            {"rank": i, "dataset": row, "image": s.image, "IoU": iou}
            for i, (iou, row, s, _) in enumerate(self.items(), 1)
        ]
        with open(os.path.join(out_dir, "worst.json"), "w") as fh:
            json.dump(listing, fh, indent=1)
        return path
