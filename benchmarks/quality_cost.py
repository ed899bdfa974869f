"""Quality for cost: what the MoE blocks and deep supervision earn, on synthetic data at
a fixed CPU budget (same epochs, same data, same seed; time is reported too).

Target (issue 6): know what each part earns; the full model should not lose to a
variant that is cheaper. Single seed: differences below ~0.02 IoU are noise.
Reproduce: .venv/bin/python benchmarks/quality_cost.py [--epochs 10 --train 200]"""

import argparse
import os
import tempfile
import time

from camodet.cli import main as camodet
from camodet.data.synth import write_dataset
from camodet.engine import history

VARIANTS = {
    "full (4 experts top-2, deep supervision)": ["--num-experts", "4", "--deep-supervision"],
    "no MoE (1 expert per block)": ["--num-experts", "1", "--top-k", "1", "--deep-supervision"],
    "no deep supervision": ["--num-experts", "4", "--no-deep-supervision"],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--img-size", type=int, default=96)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "COD10K-v3")
        write_dataset(root, train=a.train, test=1, seed=5, noncam_every=0, size_range=(96, 160))
        for name, flags in VARIANTS.items():
            out = os.path.join(tmp, str(len(rows)))
            t = time.perf_counter()
            assert (
                camodet(
                    [
                        "train",
                        "--dataset-path",
                        root,
                        "--checkpoint-dir",
                        out,
                        "--backbone",
                        "edgenext_xx_small",
                        "--img-size",
                        str(a.img_size),
                        "--batch-size",
                        "16",
                        "--num-workers",
                        "2",
                        "--epochs",
                        str(a.epochs),
                        "--stage1-epochs",
                        str(a.epochs // 4),
                        "--lr",
                        "0.001",
                        "--stage2-lr",
                        "0.0005",
                        "--warmup-epochs",
                        "1",
                        "--seed",
                        "0",
                        "--val-fraction",
                        "0.2",
                        "--no-tensorboard",
                        *flags,
                    ]
                )
                == 0
            )
            seconds = time.perf_counter() - t
            epochs = [r for r in history.read(os.path.join(out, "metrics.jsonl")) if r["type"] == "epoch"]
            rows.append((name, max(r["val"]["IoU"] for r in epochs), epochs[-1]["val"]["IoU"], seconds))
    print(
        f"\nsynthetic COD10K layout, {a.train} images (20% validation), {a.img_size} px, edgenext_xx_small, "
        f"{a.epochs} epochs, seed 0, {os.cpu_count()} cores\n"
    )
    print("| variant | best val IoU | last val IoU | train time s |")
    print("|---|---|---|---|")
    for name, best, last, sec in rows:
        print(f"| {name} | {best:.4f} | {last:.4f} | {sec:.0f} |")


if __name__ == "__main__":
    main()
