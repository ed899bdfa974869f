"""`camodet` subcommands. Training flags are generated from the config dataclasses."""

import argparse
import json
import logging
import os
import shlex
import signal
import sys

from . import __version__
from .config import ConfigError, add_arguments, from_args

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_RESUMABLE = 75  # sysexits' EX_TEMPFAIL: stopped at --time-limit or on the preemption signal;
#                     last.pth holds the position, the printed command (or --resume-from auto) continues


def program() -> list[str]:
    """How this process was started, for a command the user can paste."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name == "__main__.py":
        return ["python", "-m", "camodet"]
    if name.endswith(".py"):
        return ["python", sys.argv[0]]
    return ["camodet"]


def resume_command(argv: list[str], last: str) -> str:
    """The command that was run, continuing from `last`: --resume-from replaced (a warm
    restart's source becomes this run's own last.pth), --init-from and --overwrite dropped."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--resume-from", "--init-from"):
            skip = True
        elif not (a == "--overwrite" or a.startswith(("--resume-from=", "--init-from="))):
            kept.append(a)
    return shlex.join([*program(), *kept, "--resume-from", last])


def _train(args) -> int:
    cfg = from_args(args)
    cfg.validate()
    if cfg.run.resume_from == "auto":
        from .engine.run_folder import auto_resume

        cfg.run.resume_from = auto_resume(cfg.run.checkpoint_dir)
    from .models import check_backbone  # heavy imports only after the cheap checks pass

    check_backbone(cfg.model.backbone, cfg.data.img_size)
    from .engine.trainer import train

    last = os.path.join(cfg.run.checkpoint_dir, "last.pth")
    if cfg.data.val_fraction == 0:
        print(
            "no validation (--val-fraction 0): every image trains, last.pth is written each epoch, "
            "and there is no best_model.pth (nothing decides 'best')"
        )
    state = train(cfg)
    if state.interrupted:
        print(
            f"stopped by {state.interrupted}: resumable checkpoint {last}; continue exactly with:\n"
            f"  {resume_command(args.argv, last)}",
            file=sys.stderr,
        )
        if state.interrupted in ("SIGINT", "SIGTERM"):
            return 128 + int(getattr(signal, state.interrupted))
        return EXIT_RESUMABLE
    if state.metrics is None:  # set by every epoch this call trains; a resumed State starts without
        print(f"nothing to train: the run already ended at epoch {state.epoch} of {cfg.stages.epochs}")
        return 0
    if state.best_epoch == 0:
        why = "--val-fraction 0" if cfg.data.val_fraction == 0 else "no validation images"
        print(
            f"done: trained to epoch {state.epoch} of {cfg.stages.epochs} without validation ({why}); "
            f"the weights are in {last} (no best_model.pth)"
        )
        return 0
    print(
        f"done: best validation IoU {state.best_iou:.4f} at epoch {state.best_epoch}; "
        f"checkpoints in {cfg.run.checkpoint_dir}"
    )
    return 0


def _synth(args) -> int:
    from .data.synth import write_dataset

    if args.train < 1 or args.test < 0:
        raise ConfigError("synth needs --train >= 1 and --test >= 0")
    if not 32 <= args.min_size <= args.max_size:
        raise ConfigError(
            f"synth sizes must satisfy 32 <= --min-size <= --max-size (got {args.min_size}, {args.max_size})"
        )
    if args.workers < 0:
        raise ConfigError(f"synth --workers must be 0 (one per core) or more (got {args.workers})")
    info = write_dataset(
        args.out,
        args.train,
        args.test,
        seed=args.seed,
        noncam_every=args.noncam_every,
        size_range=(args.min_size, args.max_size),
        workers=args.workers or os.cpu_count(),
    )
    print(
        f"wrote a COD10K-v3-layout synthetic dataset to {info['root']}: {info['train']} train, "
        f"{info['test']} test images (seed {info['seed']})"
    )
    return 0


def _data_check(args) -> int:
    from .data.check import check_dataset, format_report

    report = check_dataset(args.path, decode=not args.headers_only)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0


def _model_summary(args) -> int:
    from .config import ModelConfig
    from .models import build_model, check_backbone
    from .models.summary import format_summary, summarise

    check_backbone(args.backbone, args.img_size)
    cfg = ModelConfig(
        backbone=args.backbone,
        num_experts=args.num_experts,
        top_k=min(2, args.num_experts),
        deep_supervision=not args.no_deep_supervision,
        decoder_channels=args.decoder_channels,
    )
    s = summarise(build_model(cfg), args.img_size)
    print(json.dumps(s, indent=2) if args.json else format_summary(s, args.backbone))
    return 0


def _evaluate(args) -> int:
    from .evaluation import evaluate, evaluate_preds_dir, format_table, write_results

    if (args.checkpoint is None) == (args.preds_dir is None):
        raise ConfigError("evaluate needs a checkpoint (or export folder) or --preds-dir DIR, not both")
    if args.preds_dir:
        results = evaluate_preds_dir(args.preds_dir, args.dataset_path)
    else:
        from .inference import TTA, Predictor

        tta = TTA.parse(args.tta)
        predictor = Predictor.load(args.checkpoint, weights=args.weights, device=args.device, tta=tta)
        results = evaluate(predictor, args.dataset_path, args.batch_size, args.num_workers, args.save_preds)
        if args.save_preds:
            print(f"wrote probability maps to {args.save_preds}/<dataset>/<stem>.png")
    print(format_table(results))
    if args.out:
        write_results(results, args.out)
        print(f"wrote metrics.json, metrics.csv and metrics.md to {args.out}")
    return 0


def _predict(args) -> int:
    from .inference import TTA, Predictor
    from .predict import predict_files

    if not 0.0 < args.threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1 (got {args.threshold})")
    predictor = Predictor.load(
        args.checkpoint, weights=args.weights, device=args.device, tta=TTA.parse(args.tta)
    )
    r = predict_files(predictor, args.inputs, args.out, args.threshold, args.batch_size, args.num_workers)
    print(
        f"wrote masks, probs, overlays and cutouts of {r['written']} of {r['inputs']} images to {args.out} "
        f"({r['images_per_s']:.1f} images/s)"
    )
    for item, why in r["problems"]:
        print(f"  skipped {item}: {why}", file=sys.stderr)
    return 1 if r["problems"] else 0


def _export(args) -> int:
    from .export import export

    info = export(args.checkpoint, args.out_dir, weights=args.weights, onnx=args.onnx)
    print(
        f"wrote {', '.join(info['files'])} to {args.out_dir}"
        + (f"; ONNX Runtime matches PyTorch within {info['onnx_max_abs_diff']:.1e}" if args.onnx else "")
    )
    return 0


def _inspect(args) -> int:
    from .engine.inspect import format_inspection, inspect_checkpoint

    report = inspect_checkpoint(args.checkpoint)
    print(json.dumps(report, indent=2, default=str) if args.json else format_inspection(report))
    return report["exit_code"]


def parse_memory(text: str) -> float:
    """'16GB', '16G', '12000MB' or a number of GB -> MB."""
    t = text.strip().upper().removesuffix("B")
    try:
        if t.endswith("M"):
            return float(t[:-1])
        return float(t.removesuffix("G")) * 1024
    except ValueError:
        raise ConfigError(f"--gpu-memory {text!r}: use a size like 16GB or 12000MB") from None


def _plan(args) -> int:
    cfg = from_args(args)
    has_data = bool(cfg.data.dataset_path or cfg.data.images)
    cfg.validate(check_paths=has_data)
    if args.effective_batch < 1:
        raise ConfigError(f"--effective-batch must be at least 1 (got {args.effective_batch})")
    import dataclasses

    import torch

    from .config import save_yaml
    from .engine.loaders import split_train_val, training_samples
    from .engine.measure import MEMORY_KINDS, measure_candidates
    from .engine.planner import PROFILES, PlanError, choose, format_plan
    from .models import check_backbone

    check_backbone(cfg.model.backbone, cfg.data.img_size)
    on_gpu = torch.cuda.is_available() and cfg.run.device != "cpu"
    if args.gpu_memory:
        budget = parse_memory(args.gpu_memory)
    elif on_gpu:
        budget = torch.cuda.get_device_properties(0).total_memory / 2**20
    else:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    images = (
        len(
            split_train_val(
                training_samples(cfg.data, skip_bad_files=True), cfg.data.val_fraction, cfg.run.seed
            )[0]
        )
        if has_data
        else args.num_images
    )

    def show(m):
        print(
            f"measured stage {m['stage']}, micro-batch {m['batch']}: "
            + (
                f"failed ({m['error']})"
                if "error" in m
                else f"{m['peak_mb']:.0f} MB, {m['s_per_step']:.2f} s/step"
            ),
            flush=True,
        )

    step_spec = {
        "model_cfg": dataclasses.asdict(cfg.model),
        "img_size": cfg.data.img_size,
        "steps": args.steps,
        "grad_checkpointing": cfg.speed.grad_checkpointing,
        "device": "cuda" if on_gpu else "cpu",
        "amp": cfg.optim.amp,
        "channels_last": cfg.speed.channels_last,
        "compile": cfg.speed.compile,
    }
    measured = measure_candidates(step_spec, args.candidates, budget, show)
    kind = next((m["memory"] for m in measured if "memory" in m), "unknown")
    print(
        f"\nbudget {budget:.0f} MB ({'GPU' if on_gpu else 'CPU RAM'}; measured: "
        f"{MEMORY_KINDS.get(kind, kind)}), "
        f"{images} training images, target effective batch {args.effective_batch}, LR rule {args.lr_scaling}\n"
    )
    base = {
        "lr": cfg.optim.lr,
        "stage2_lr": cfg.stage2_lr,
        "base_batch1": cfg.optim.batch_size * cfg.optim.accumulation_steps,
        "base_batch2": cfg.stage2_batch_size * cfg.optim.accumulation_steps,
    }
    os.makedirs(args.out_dir, exist_ok=True)
    for profile, margin in PROFILES.items():
        try:
            accum, plans = choose(
                measured, budget, margin, args.effective_batch, base, args.lr_scaling, images
            )
        except PlanError as e:
            print(f"{profile}: {e}")
            continue
        optim = dataclasses.replace(
            cfg.optim,
            batch_size=plans[0].micro_batch,
            stage2_batch_size=plans[1].micro_batch,
            accumulation_steps=accum,
            lr=plans[0].lr,
            stage2_lr=plans[1].lr,
        )
        path = os.path.join(args.out_dir, f"plan-{profile}.yaml")
        save_yaml(dataclasses.replace(cfg, optim=optim), path)
        print(format_plan(profile, accum, plans, kind, budget) + f"\n  -> {path}")
    return 0


def _report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir, predictions=not args.no_predictions)
    print(f"wrote {path} and the plots in {os.path.join(args.run_dir, 'report')}/")
    return 0


def _inference_flags(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument(
        "--weights",
        choices=["auto", "ema", "raw"],
        default="auto",
        help="auto: what the checkpoint's model holds (EMA in best_model.pth of an EMA run)",
    )
    p.add_argument(
        "--tta", nargs="+", metavar="SPEC", help="test-time augmentation: flip and/or scales=0.75,1,1.25"
    )
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="camodet", description="Camouflaged object detection: train, evaluate, ship."
    )
    p.add_argument("--version", action="version", version=f"camodet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a detector (two stages)")
    add_arguments(t)
    t.set_defaults(func=_train)

    s = sub.add_parser("synth", help="write a synthetic camouflage dataset (COD10K-v3 layout)")
    s.add_argument("out", help="output folder")
    s.add_argument("--train", type=int, default=200, help="training images")
    s.add_argument("--test", type=int, default=50, help="test images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--noncam-every", type=int, default=10, help="every N-th image is a NonCAM background (0: none)"
    )
    s.add_argument("--min-size", type=int, default=160)
    s.add_argument("--max-size", type=int, default=320)
    s.add_argument("--workers", type=int, default=0, help="processes that generate images (0: one per core)")
    s.set_defaults(func=_synth)

    dgrp = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    c = dgrp.add_parser("check", help="report layout, counts, sizes and bad files")
    c.add_argument("path")
    c.add_argument("--headers-only", action="store_true", help="do not decode every file")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_data_check)

    e = sub.add_parser("evaluate", help="the field's metrics on test splits, at original resolution")
    e.add_argument("checkpoint", nargs="?", help="checkpoint or export folder (omit with --preds-dir)")
    e.add_argument("--dataset-path", nargs="+", required=True)
    e.add_argument("--out", help="folder for metrics.json/.csv/.md")
    e.add_argument("--save-preds", help="write 8-bit probability maps as DIR/<dataset>/<stem>.png")
    e.add_argument("--preds-dir", help="score existing maps in DIR/<dataset>/<stem>.png instead of a model")
    _inference_flags(e, batch_size=8)
    e.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="masks, probability maps, overlays and cut-outs for your images")
    pr.add_argument("checkpoint", help="checkpoint or export folder")
    pr.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    pr.add_argument("--out", required=True, help="output folder (masks/, probs/, overlays/, cutouts/)")
    pr.add_argument("--threshold", type=float, default=0.5, help="probability that counts as object")
    _inference_flags(pr, batch_size=4)
    pr.set_defaults(func=_predict)

    x = sub.add_parser("export", help="model.safetensors + config.json (and --onnx model.onnx)")
    x.add_argument("checkpoint")
    x.add_argument("out_dir")
    x.add_argument(
        "--onnx", action="store_true", help="also write model.onnx (pip install 'camodet[export]')"
    )
    x.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto")
    x.set_defaults(func=_export)

    pl = sub.add_parser(
        "plan",
        help="measure steps, then choose micro-batch, accumulation and LR "
        "(three profiles, each a YAML for train --config)",
    )
    add_arguments(pl)
    pl.add_argument("--gpu-memory", help="memory budget, e.g. 16GB (default: the GPU's, or the CPU's RAM)")
    pl.add_argument("--effective-batch", type=int, default=16, help="images per optimizer step to reach")
    pl.add_argument(
        "--lr-scaling",
        choices=["linear", "sqrt"],
        default="linear",
        help="scale the configured LRs with the effective batch: linear or square root",
    )
    pl.add_argument(
        "--candidates", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="micro-batches to try"
    )
    pl.add_argument("--steps", type=int, default=2, help="timed steps per measurement (after one warm-up)")
    pl.add_argument(
        "--num-images", type=int, default=3600, help="training images when no --dataset-path is given"
    )
    pl.add_argument("--out-dir", default="plans", help="where the three YAML files go")
    pl.set_defaults(func=_plan)

    rp = sub.add_parser("report", help="report.html (curves, events, advice, predictions) for a run folder")
    rp.add_argument("run_dir")
    rp.add_argument("--no-predictions", action="store_true", help="skip the grid of validation predictions")
    rp.set_defaults(func=_report)

    i = sub.add_parser(
        "inspect",
        help="verify a checkpoint: position, metrics, config, NaN/Inf tensors "
        "(exit 0 clean, 1 non-finite, 2 unreadable)",
    )
    i.add_argument("checkpoint")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_inspect)

    mgrp = sub.add_parser("model", help="model tools").add_subparsers(dest="model_command", required=True)
    m = mgrp.add_parser("summary", help="parameters by part and GFLOPs")
    m.add_argument("--backbone", default="edgenext_base")
    m.add_argument("--num-experts", type=int, default=7)
    m.add_argument("--img-size", type=int, default=384)
    m.add_argument("--decoder-channels", type=int, default=64)
    m.add_argument("--no-deep-supervision", action="store_true")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_model_summary)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from .data.io import DataError
    from .engine.checkpoint import CheckpointError
    from .engine.guard import DivergenceError
    from .export import ExportError
    from .models.backbone import BackboneError

    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, BackboneError, ExportError) as e:
        print(f"camodet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DivergenceError as e:
        print(f"camodet: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("camodet: interrupted", file=sys.stderr)
        return 130
