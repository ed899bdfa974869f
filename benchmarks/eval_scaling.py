"""Evaluation wall time over processes: `camodet evaluate` on synthetic test images at mixed
original sizes, one process against two (torchrun --nproc-per-node 2, and --workers 2).

Target (issue 27): 2 processes at least 1.7x faster than 1 on a 2-core machine, the table
identical to the last printed digit.
Reproduce: .venv/bin/python benchmarks/eval_scaling.py [--images 2000 --min-size 256
--max-size 768 --work DIR --checkpoint CKPT]
Without --checkpoint the maps scored are made here from each ground truth (blurred and noisy),
scored with --preds-dir: the metrics' CPU work, which is what dominates an evaluation at
original resolution, and nothing else. With --checkpoint the model runs too.
Prints a markdown table: seconds per setting, speed-up over one process, whether the table
matches the single process's."""

import argparse
import glob
import os
import platform
import subprocess
import sys
import time

import cv2
import numpy as np
import torch


def write_maps(root: str, preds: str, seed: int = 0) -> None:
    """An 8-bit 'prediction' per test GT: blurred, noisy, partly shifted (a plausible map)."""
    rng = np.random.default_rng(seed)
    os.makedirs(preds, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(root, "Test", "GT_Object", "*.png"))):
        gt = cv2.imread(path, cv2.IMREAD_GRAYSCALE).astype(np.float32)
        shift = np.float32([[1, 0, rng.integers(-8, 9)], [0, 1, rng.integers(-8, 9)]])
        pred = cv2.warpAffine(cv2.GaussianBlur(gt, (0, 0), 3), shift, gt.shape[::-1])
        pred = np.clip(pred + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(preds, os.path.basename(path)), pred)


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--min-size", type=int, default=256)
    p.add_argument("--max-size", type=int, default=768)
    p.add_argument("--work", default="eval_scaling_work", help="folder for the data (kept for reruns)")
    p.add_argument("--checkpoint", help="evaluate this model instead of scoring made-up maps")
    a = p.parse_args()
    root = os.path.join(a.work, f"SYNTH-{a.images}-{a.min_size}-{a.max_size}", "COD10K-v3")
    camodet = [sys.executable, "-m", "camodet"]
    if not os.path.isdir(root):
        subprocess.run(
            [*camodet, "synth", root, "--train", "4", "--test", str(a.images), "--noncam-every", "0"]
            + ["--min-size", str(a.min_size), "--max-size", str(a.max_size)],
            check=True,
        )
    preds = os.path.join(os.path.dirname(root), "preds")
    if not a.checkpoint and not os.path.isdir(preds):
        write_maps(root, preds)
    source = [a.checkpoint] if a.checkpoint else ["--preds-dir", preds]
    args = ["evaluate", *source, "--dataset-path", root, "--num-workers", "0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "camodet"]
    settings = [
        ("1 process", [*camodet, *args]),
        ("torchrun --nproc-per-node 2", [*torchrun, *args]),
        ("--workers 2", [*camodet, *args, "--workers", "2"]),
    ]
    rows, reference = [], None
    for name, cmd in settings:
        seconds, table = timed(cmd)
        reference = reference or (seconds, table)
        rows.append((name, seconds, reference[0] / seconds, table == reference[1]))
    print(
        f"\n{a.images} synthetic test images, {a.min_size}-{a.max_size} px; "
        f"{'model ' + a.checkpoint if a.checkpoint else 'saved maps (--preds-dir)'}; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| setting | wall s | speed-up | table identical |\n|---|---|---|---|")
    for name, seconds, speedup, same in rows:
        print(f"| {name} | {seconds:.1f} | {speedup:.2f}x | {'yes' if same else 'NO'} |")
    print("\n" + reference[1])


if __name__ == "__main__":
    main()
