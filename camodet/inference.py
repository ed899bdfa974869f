"""Predictor: load a checkpoint, predict probability maps at each image's original
size, and evaluate on test splits with the field's protocol."""

import json
import os
from dataclasses import fields

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from .config import ModelConfig
from .data.dataset import CODDataset, collate
from .data.io import read_image
from .data.layouts import gather
from .data.transforms import normalise, resize
from .engine.checkpoint import load_checkpoint
from .metrics import VARIANTS, Evaluator, to_uint8
from .models import build_model

TABLE_COLUMNS = ("Sm", "wFm", "meanEm", "maxEm", "adpEm", "meanFm", "maxFm", "adpFm", "MAE", "IoU", "Dice")


class Predictor:
    def __init__(self, model, img_size: int, device: torch.device):
        self.model = model.eval().to(device)
        self.img_size = img_size
        self.device = device

    @classmethod
    def load(cls, path: str, weights: str = "auto", device: str = "auto") -> "Predictor":
        """weights: 'auto' (what the checkpoint's model_state_dict holds: EMA for a best
        checkpoint of an EMA run), 'ema' or 'raw'."""
        ckpt = load_checkpoint(path)
        cfg = ckpt.get("config", {})
        known = {f.name for f in fields(ModelConfig)}
        mcfg = ModelConfig(**{k: v for k, v in cfg.get("model", {}).items() if k in known})
        mcfg.pretrained, mcfg.pretrained_path = False, None  # the checkpoint has every weight
        model = build_model(mcfg)
        state = ckpt["model_state_dict"]
        if weights == "ema":
            state = ckpt.get("ema_state_dict") or state
        elif weights == "raw":
            state = ckpt.get("raw_model_state_dict") or state
        model.load_state_dict(state)
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
        return cls(model, int(cfg.get("data", {}).get("img_size", 384)), dev)

    @torch.no_grad()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device)).logits.float()

    def predict(self, image) -> np.ndarray:
        """Path, PIL image or HxWx3 array -> probability map (float32, 0..1) at the image's size."""
        if isinstance(image, str):
            image = read_image(image)
        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        x = torch.from_numpy(normalise(resize(arr[:, :, :3], self.img_size)))[None]
        return probability_at(self.logits(x)[0], arr.shape[:2])


def probability_at(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(1, h, w) logits -> probability map resized to `size` (H, W)."""
    up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(up)[0, 0].cpu().numpy()


def evaluate(predictor: Predictor, dataset_paths: list[str], batch_size: int = 8, num_workers: int = 2,
             save_preds: str | None = None) -> dict:
    """{dataset name: metrics} over each path's test split, at original resolution."""
    results = {}
    for root in dataset_paths:
        samples = gather([root], "test")
        by_name: dict[str, list] = {}
        for s in samples:
            by_name.setdefault(s.dataset, []).append(s)
        for name, group in by_name.items():
            ds = CODDataset(group, predictor.img_size, train=False)
            loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
            ev = Evaluator(full=True)
            for batch in tqdm(loader, desc=name, leave=False, disable=None):
                logits = predictor.logits(batch["image"])
                for j, gt in enumerate(batch["gt"]):
                    sample = group[int(batch["index"][j])]
                    pred = to_uint8(probability_at(logits[j], gt.shape))
                    ev.step(pred, gt, sample.name)
                    if save_preds:
                        os.makedirs(os.path.join(save_preds, name), exist_ok=True)
                        Image.fromarray(pred).save(os.path.join(save_preds, name, sample.name + ".png"))
            results[name] = ev.results()
    return results


def format_table(results: dict) -> str:
    head = "| Dataset | " + " | ".join(TABLE_COLUMNS) + " | Images |"
    lines = [head, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in TABLE_COLUMNS) + f" | {r['images']} |")
    lines.append("")
    lines += [f"- {c}: {VARIANTS[c]}" for c in TABLE_COLUMNS]
    return "\n".join(lines)


def write_results(results: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    with open(os.path.join(out_dir, "metrics.csv"), "w") as fh:
        fh.write("dataset," + ",".join(TABLE_COLUMNS) + ",images\n")
        for name, r in results.items():
            fh.write(name + "," + ",".join(f"{r[c]:.6f}" for c in TABLE_COLUMNS) + f",{r['images']}\n")
    with open(os.path.join(out_dir, "metrics.md"), "w") as fh:
        fh.write(format_table(results) + "\n")
