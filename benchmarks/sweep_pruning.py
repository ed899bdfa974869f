"""What pruning saves: the same trials (a seeded random sampler draws the same settings whatever the
pruner does) run by `camodet sweep` with the median pruner and without one, on synthetic data.
Compute is counted as epochs trained and as the trials' wall time; the best IoU of each is shown.

    python benchmarks/sweep_pruning.py --out /tmp/sweep_pruning --trials 10 --epochs 4
"""

import argparse
import json
import os
import shutil
import time

SPACE = {"optim.lr": {"low": 1e-6, "high": 3e-2, "log": True}, "optim.weight_decay": [0.01, 0.05]}


def sweep(out: str, data: str, trials: int, epochs: int, pruner: str) -> dict:
    import optuna

    from camodet.cli import main
    from camodet.tune.study import default_storage

    space = os.path.join(out, "space.yaml")
    with open(space, "w") as fh:
        json.dump(SPACE, fh)
    folder = os.path.join(out, pruner)
    started = time.monotonic()
    args = ["sweep", "--dataset-path", data, "--backbone", "edgenext_xx_small", "--decoder-channels", "16"]
    args += ["--img-size", "64", "--batch-size", "4", "--num-workers", "0", "--no-tensorboard"]
    args += ["--epochs", str(epochs), "--stage1-epochs", "1", "--min-lr", "0", "--image-every", "0"]
    args += ["--space", space, "--trials", str(trials), "--out", folder, "--pruner", pruner]
    args += ["--sampler", "random", "--sampler-seed", "0", "--prune-startup", "2", "--prune-warmup", "1"]
    assert main(args) == 0
    wall = time.monotonic() - started
    study = optuna.load_study(study_name="camodet", storage=default_storage(folder))
    trials = study.get_trials()
    return {
        "pruner": pruner,
        "epochs": sum(t.user_attrs["epochs"] for t in trials),
        "trial_seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials),
        "wall_seconds": wall,
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "best_iou": study.best_value,
        "params": [t.params for t in trials],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    from camodet.data.synth import write_dataset

    shutil.rmtree(args.out, ignore_errors=True)
    data = os.path.join(args.out, "SYNTH")
    write_dataset(data, train=24, test=6, seed=3, noncam_every=8, size_range=(64, 112))
    runs = [sweep(args.out, data, args.trials, args.epochs, p) for p in ("none", "median")]
    assert runs[0]["params"] == runs[1]["params"], "the two sweeps drew different trials"
    full, pruned = runs
    print(f"{args.trials} trials x {args.epochs} epochs, the same settings in both sweeps")
    print("| pruner | epochs trained | trial time (s) | pruned trials | best val IoU |")
    print("|---|---|---|---|---|")
    for r in runs:
        cells = [r["pruner"], r["epochs"], f"{r['trial_seconds']:.0f}", r["pruned"], f"{r['best_iou']:.4f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(
        f"pruning spent {pruned['epochs'] / full['epochs']:.0%} of the epochs and "
        f"{pruned['trial_seconds'] / full['trial_seconds']:.0%} of the trial time"
    )
    with open(os.path.join(args.out, "result.json"), "w") as fh:
        json.dump(runs, fh, indent=1)


if __name__ == "__main__":
    main()
