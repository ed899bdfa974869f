"""What each decoder costs to train per image, measured side by side in one process so that every
variant sees the same machine: CPU ms per training image with the backbone frozen (stage 1) and
trainable (stage 2), forward + loss + backward + AdamW + reading augmented CAMO photos (the
calibration of quality_real.py), interleaved over --repeats rounds; and from that, the epochs
each variant gets for the CPU budget of a reference recipe (--reference-epochs of --reference,
the same stage-1 share), which quality_camo.py then runs with fixed epochs (a load on the machine
changes the wall time, not the work).

Reproduce: PYTHONPATH=. .venv/bin/python benchmarks/decoder_cost.py --threads 1 \\
    --variants 'moe=' 'fpn=--decoder fpn' 'sinet=--decoder sinet --deep-supervision' \\
    --reference moe --reference-epochs 9 --stage1-epochs 2 [--recipe configs/cod-small.yaml]"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # quality_real, quality_camo
import quality_camo  # noqa: E402
import quality_real  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camo", default=quality_camo.DEFAULT_CAMO)
    p.add_argument("--recipe", default=quality_camo.COD_RECIPE)
    p.add_argument("--backbone", default=quality_real.BACKBONE)
    p.add_argument("--img-size", type=int, default=None, help="default: the --recipe file's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--variants", nargs="+", required=True, metavar="NAME=FLAGS")
    p.add_argument("--reference", required=True, help="the variant whose epochs set the budget")
    p.add_argument("--reference-epochs", type=int, required=True)
    p.add_argument("--stage1-epochs", type=int, required=True, help="the reference's stage-1 epochs")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    weights = quality_real.lite_weights(a.backbone)
    if not os.path.isdir(a.camo) or weights is None:
        print(f"skipped: no CAMO photos at {a.camo} or no weights for {a.backbone}")
        return 2
    variants = dict(v.split("=", 1) for v in a.variants)
    size = a.img_size or quality_real.recipe_size(a.recipe)
    opts = argparse.Namespace(recipe=a.recipe, backbone=a.backbone, img_size=size, recipe_args="")
    pairs = quality_camo.camo_pairs(a.camo)
    val = quality_camo.read_split(quality_camo.SPLIT_FILE, sorted(pairs))
    costs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    models: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = quality_camo.split_tree(pairs, val, os.path.join(tmp, "camo"))
        for _ in range(a.repeats):
            for name, flags in variants.items():
                # a variant may name another backbone: its own ImageNet weights then
                words = shlex.split(flags)
                backbone = words[words.index("--backbone") + 1] if "--backbone" in words else a.backbone
                own = argparse.Namespace(**{**vars(opts), "backbone": backbone})
                mine = quality_real.lite_weights(backbone)
                cfg = quality_real.recipe_config(quality_real.recipe_flags(own, data, mine, extra=flags))
                costs[name].append(quality_real.calibrate(cfg, data, steps=a.steps))
                if name not in models:  # parameters, FLOPs and inference speed, in the same rounds
                    models[name] = quality_real.model_cost(cfg)
                c1, c2 = costs[name][-1]
                print(f"{name}: {c1 * 1e3:.1f} / {c2 * 1e3:.1f} ms", flush=True)
    share = a.stage1_epochs / a.reference_epochs

    def epoch_cost(name: str) -> float:  # one epoch of the reference's stage mix, per image
        c1, c2 = (statistics.mean(c[k] for c in costs[name]) for k in (0, 1))
        return share * c1 + (1 - share) * c2

    budget = a.reference_epochs * epoch_cost(a.reference)
    print(
        f"\n{a.backbone}, {a.threads} thread(s), {a.repeats} rounds of {a.steps} steps; budget: "
        f"{a.reference_epochs} epochs of {a.reference}\n"
    )
    print(
        "| variant | flags | params M | GFLOPs/img | infer img/s | stage 1 ms/img | stage 2 ms/img "
        "| x reference | epochs (stage 1) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, flags in variants.items():
        c1, c2 = (statistics.mean(c[k] for c in costs[name]) for k in (0, 1))
        epochs = max(2, round(budget / epoch_cost(name)))
        stage1 = max(1, round(epochs * share)) if a.stage1_epochs else 0
        ratio = epoch_cost(name) / epoch_cost(a.reference)
        quoted = shlex.quote(flags) if flags else "(the recipe)"
        m = models[name]
        print(
            f"| {name} | {quoted} | {m['params_m']:.2f} | {m['gflops']:.2f} | {m['infer_img_s']:.1f} | "
            f"{c1 * 1e3:.1f} | {c2 * 1e3:.1f} | {ratio:.2f} | {epochs} ({stage1}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
