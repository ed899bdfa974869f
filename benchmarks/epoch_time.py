"""The whole training loop against its steps: per epoch, the training pass's wall time
against steps x the step time, and validation's time, for several --num-workers settings.

Target (issue 16): training pass of an epoch <= 1.1 x (steps x step time) with the default
worker setting (auto) on the development machine (2 cores, CPU).

For each worker setting, a fresh `camodet train` (2 epochs: one stage-1, one stage-2) at the
small configuration (edgenext_xx_small, 4 experts, deep supervision, 128 px, batch 16) on a
synthetic dataset; its metrics.jsonl gives per epoch the pass (train_time_s), the median
in-loop step (step_time_s), the data wait and validation's time. The step time it is held
against is measure_step's (camodet.engine.measure: a fresh process, the same model, stage
and batch, no data loading, mean of --measure-steps steps after one warm-up).

Reproduce: PYTHONPATH=. python benchmarks/epoch_time.py [--workers default 0 1 2 4] [--images 512] [--cache]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--backbone",
    "edgenext_xx_small",
    "--num-experts",
    "4",
    "--deep-supervision",
    "--img-size",
    "128",
    "--batch-size",
    "16",
    "--decoder-channels",
    "64",
]


def run_train(data: str, out: str, workers: str, epochs: int, cache_dir: str | None) -> list[dict]:
    args = [
        sys.executable,
        "-m",
        "camodet",
        "train",
        "--dataset-path",
        data,
        "--checkpoint-dir",
        out,
        *SMALL,
        "--epochs",
        str(epochs),
        "--stage1-epochs",
        str(epochs // 2),
        "--seed",
        "0",
    ]
    if cache_dir:
        args += ["--cache", "--cache-dir", cache_dir]
    if workers != "default":
        args += ["--num-workers", workers]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise SystemExit(f"camodet train --num-workers {workers} failed:\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if r.get("type") == "epoch"]


def isolated_step(stage: int, steps: int) -> float:
    from camodet.engine.measure import measure_in_subprocess

    spec = dict(
        model_cfg={
            "backbone": "edgenext_xx_small",
            "num_experts": 4,
            "deep_supervision": True,
            "decoder_channels": 64,
        },
        img_size=128,
        batch=16,
        stage=stage,
        steps=steps,
        device="cpu",
    )
    m = measure_in_subprocess(**spec)
    if "error" in m:
        raise SystemExit(f"measure_step failed: {m['error']}")
    return m["s_per_step"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--workers",
        nargs="+",
        default=["default", "0", "1", "2", "4"],
        help="--num-workers values to run; 'default' passes none (auto)",
    )
    p.add_argument(
        "--images", type=int, default=512, help="synthetic training images (10%% go to validation)"
    )
    p.add_argument("--size", type=int, nargs=2, default=[160, 320], help="synthetic image side range (px)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--measure-steps", type=int, default=5)
    p.add_argument(
        "--cache", action="store_true", help="train with --cache (images decoded and resized once)"
    )
    a = p.parse_args()
    sys.path.insert(0, ROOT)
    import torch

    from camodet.data.synth import write_dataset
    from camodet.launch import resolve_workers

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "COD10K-v3")
        write_dataset(data, train=a.images, test=0, seed=0, size_range=tuple(a.size), workers=2)
        step = {s: isolated_step(s, a.measure_steps) for s in (1, 2)}
        rows = []
        if a.cache:  # built once, before any timed run
            run_train(data, os.path.join(tmp, "warm-cache"), "0", 1, os.path.join(tmp, "cache"))
        for w in a.workers:
            for r in run_train(
                data,
                os.path.join(tmp, f"run-{w}"),
                w,
                a.epochs,
                os.path.join(tmp, "cache") if a.cache else None,
            ):
                rows.append((w, r))
    auto = resolve_workers("auto", "cpu")
    print(
        f"camodet train, small configuration, {a.images} synthetic images of {a.size[0]}-{a.size[1]} px, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"auto = {auto} workers here"
    )
    print(f"isolated step (measure_step): stage 1 {step[1]:.3f} s, stage 2 {step[2]:.3f} s\n")
    print(
        "| --num-workers | epoch | stage | steps | pass s | steps x isolated step s | pass / that | "
        "in-loop step s | pass / (steps x in-loop) | data wait s | validation s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w, r in rows:
        iso = r["steps"] * step[r["stage"]]
        label = w if w != "default" else f"default: auto = {r['num_workers']}"
        print(
            f"| {label} | {r['epoch']} | "
            f"{r['stage']} | {r['steps']} | {r['train_time_s']:.2f} | {iso:.2f} | "
            f"{r['train_time_s'] / iso:.2f} | "
            f"{r['step_time_s']:.3f} | {r['loop_ratio']:.2f} | {r['data_wait_s']:.2f} | "
            f"{r['val_time_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
