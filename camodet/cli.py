"""`camodet` subcommands. Training flags are generated from the config dataclasses."""

import argparse
import functools
import json
import logging
import os
import shlex
import sys

from . import __version__
from .config import ConfigError, add_arguments, from_args

EXIT_USAGE = 2
EXIT_DIVERGED = 3


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
    restart's source becomes this run's own last checkpoint), --init-from and --overwrite dropped."""
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
    from .runs.folder import RunFolder

    folder = RunFolder(cfg.run.checkpoint_dir)
    if cfg.run.resume_from == "auto":
        cfg.run.resume_from = folder.auto_resume()
    from .models import check_model  # heavy imports only after the cheap checks pass
    from .runs.folder import BEST_METRIC

    check_model(cfg.model, cfg.data.img_size)
    from .engine.interrupt import stopped_exit_code
    from .engine.trainer import train

    last = folder.last
    if cfg.data.val_fraction == 0:
        print(
            f"no validation (--val-fraction 0): every image trains, {last} is written each epoch, "
            f"and there is no best checkpoint (nothing decides 'best')"
        )
    state = train(cfg)
    if state.interrupted:
        print(
            f"stopped by {state.interrupted}: resumable checkpoint {last}; continue exactly with:\n"
            f"  {resume_command(args.argv, last)}",
            file=sys.stderr,
        )
        return stopped_exit_code(state.interrupted)
    if state.metrics is None:  # set by every epoch this call trains; a resumed State starts without
        print(f"nothing to train: the run already ended at epoch {state.epoch} of {cfg.stages.epochs}")
        return 0
    if state.best_epoch == 0:
        why = "--val-fraction 0" if cfg.data.val_fraction == 0 else "no validation images"
        print(
            f"done: trained to epoch {state.epoch} of {cfg.stages.epochs} without validation ({why}); "
            f"the weights are in {last} (no best checkpoint)"
        )
        return 0
    print(
        f"done: best validation {BEST_METRIC} {state.best_iou:.4f} at epoch {state.best_epoch}; "
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
    from .models import build_model, check_model
    from .models.summary import format_summary, summarise

    cfg = from_args(args)
    cfg.validate(check_paths=False)
    check_model(cfg.model, cfg.data.img_size)
    s = summarise(build_model(cfg.model), cfg.data.img_size)
    print(json.dumps(s, indent=2) if args.json else format_summary(s, cfg.model.backbone))
    return 0


def _evaluate(args) -> int:
    from .evaluation.paper import format_latex, scaling_note
    from .evaluation.protocol import evaluate, evaluate_preds_dir, format_table, write_results
    from .evaluation.worst import WorstImages

    if (args.checkpoint is None) == (args.preds_dir is None):
        raise ConfigError("evaluate needs a checkpoint (or export folder) or --preds-dir DIR, not both")
    if args.curves and not args.out:
        raise ConfigError("--curves writes files: add --out DIR (the curves go to DIR/curves/)")
    if args.worst is not None and not args.out:
        raise ConfigError("--worst writes a panel: add --out DIR (it goes to DIR/worst.png)")
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: give the number of metric processes (0: none)")
    from .launch import shutdown, start

    curves: dict | None = {} if args.curves else None
    worst = WorstImages(args.worst) if args.worst is not None else None
    # under torchrun or srun: this process's share, on its own GPU
    d, device = start(
        args.device, rerun="evaluate writes nothing before the end: run it again once the cause is fixed."
    )
    if args.preds_dir:
        results = evaluate_preds_dir(
            args.preds_dir, args.dataset_path, args.minmax, curves, worst, args.workers, d
        )
        scored = {"preds_dir": os.path.abspath(args.preds_dir)}
    else:
        from .serving.export import provenance
        from .serving.fetch import resolve
        from .serving.predictor import TTA, load_predictor

        tta = TTA.parse(args.tta)
        local = resolve(args.checkpoint)
        predictor = load_predictor(local, weights=args.weights, device=str(device), tta=tta)
        scored = provenance(args.checkpoint, local, predictor)
        results = evaluate(
            predictor,
            args.dataset_path,
            args.batch_size,
            args.num_workers,
            args.save_preds,
            args.minmax,
            curves,
            worst,
            args.workers,
            d,
        )
        if args.save_preds and d.is_main:
            print(f"wrote probability maps to {args.save_preds}/<dataset>/<stem>.png")
    shutdown(d)
    if not d.is_main:  # rank 0 holds every process's scores and prints the table
        return 0
    note = scaling_note(args.minmax)
    method = args.method or method_name(args.checkpoint or args.preds_dir)
    print(format_latex(results, method, note) if args.format == "latex" else format_table(results, note))
    if args.out:
        write_results(results, args.out, note, scored)
        print(f"wrote metrics.json, metrics.csv and metrics.md to {args.out}")
        if args.format == "latex":
            with open(os.path.join(args.out, "metrics.tex"), "w") as fh:
                fh.write(format_latex(results, method, note) + "\n")
            print(f"wrote metrics.tex to {args.out}")
    if curves is not None:
        from .evaluation.curves import plot_curves, save_curves
        from .evaluation.paper import is_super_row

        folder = os.path.join(args.out, "curves")
        files = save_curves(curves, folder, method)
        files += plot_curves({k: v for k, v in curves.items() if not is_super_row(k)}, folder, method)
        print(f"wrote {len(files)} curve files to {folder}/ (<row>.npz, curves.npy, pr.png, fm.png, em.png)")
    if worst is not None:
        print(f"\nthe {len(worst.items())} images with the lowest IoU:\n{worst.table()}")
        print(f"wrote {worst.save(args.out)} (image | ground truth | prediction) and worst.json")
    return 0


def method_name(source: str) -> str:
    """The name a table or plot gives the model: its run or export folder (a checkpoint in 'runs/x/'
    -> 'x'), the predictions folder, or a Hub id's model name ('user/camo-model' -> 'camo-model')."""
    from .serving.fetch import is_hub_id

    if is_hub_id(source):
        return source.split("/", 1)[1]
    path = os.path.abspath(source)
    return os.path.basename(path if os.path.isdir(path) else os.path.dirname(path)) or "camodet"


def _predict(args) -> int:
    from .serving.predict import expand_patterns, predict_files
    from .serving.predictor import TTA, load_predictor
    from .serving.video import is_video, predict_clips

    if not 0.0 < args.threshold < 1.0:
        raise ConfigError(f"--threshold must be between 0 and 1 (got {args.threshold})")
    if args.smooth < 1 or args.fps <= 0:
        raise ConfigError(
            f"--smooth must be at least 1 frame and --fps positive (got {args.smooth}, {args.fps})"
        )
    # a pattern's matches are sorted like the inputs named one by one ('clips/*.mp4' are videos)
    inputs = expand_patterns(args.inputs, folders=args.frames)
    videos = [i for i in inputs if os.path.isfile(i) and is_video(i)]
    folders = [i for i in inputs if args.frames and os.path.isdir(i)]
    images = [i for i in inputs if i not in videos and i not in folders]
    from .launch import Shard, gather_objects, shutdown, start

    # under torchrun or srun: this process's share, on its own GPU
    d, device = start(
        args.device, rerun="The outputs written so far stay: --skip-existing does only the rest."
    )
    predictor = load_predictor(
        args.checkpoint,
        weights=args.weights,
        device=str(device),
        tta=TTA.parse(args.tta),
        runtime=args.runtime,
    )
    shard, lines, problems = Shard.of(d), [], []
    if images:
        r = predict_files(
            predictor,
            images,
            args.out,
            args.threshold,
            args.batch_size,
            args.num_workers,
            args.skip_existing,
            d,
        )
        parts = gather_objects(r, d)
        written, existing = sum(p["written"] for p in parts), sum(p["existing"] for p in parts)
        lines.append(
            f"wrote masks, probs, overlays and cutouts of {written} of {r['inputs']} images "
            f"to {args.out} ({sum(p['images_per_s'] for p in parts):.1f} images/s"
            + (f" in {d.world} processes" if d.enabled else "")
            + ")"
            + (f"; {existing} already there (--skip-existing)" if existing else "")
        )
        problems += [item for p in parts for item in p["problems"]]
    if videos or folders:
        clips, bad = predict_clips(
            predictor,
            videos,
            folders,
            args.out,
            args.fps,
            args.skip_existing,
            shard,
            threshold=args.threshold,
            batch_size=args.batch_size,
            smooth=args.smooth,
            save_frames=args.save_frames,
        )
        for rank, (done, failed) in enumerate(gather_objects((clips, bad), d)):
            lines += [
                _clip_line(c, args.save_frames) + (f" [process {rank}]" if d.enabled else "") for c in done
            ]
            problems += failed
    shutdown(d)
    if d.is_main:  # every process's outcome, printed once
        print("\n".join(lines))
        for item, why in problems:
            print(f"  skipped {item}: {why}", file=sys.stderr)
    return 1 if problems else 0


def _clip_line(c: dict, save_frames: bool) -> str:
    w, h = c["size"]
    return (
        f"{c['source']}: {c['frames']} frames, {w}x{h} at {c['fps']:g} fps -> "
        f"{os.path.dirname(c['files'][0])}/mask.mp4, overlay.mp4"
        + (", masks/, probs/" if save_frames else "")
        + f" ({c['frames_per_s']:.1f} frames/s)"
        + (
            f"; the videos are {c['video_size'][0]}x{c['video_size'][1]} (MPEG-4 needs even sizes: "
            f"the last row or column repeated)"
            if c["video_size"] != c["size"]
            else ""
        )
    )


def _export(args) -> int:
    from .serving.export import Int8Request, export

    if args.int8 != bool(args.calibration):
        raise ConfigError("--int8 and --calibration IMAGES go together (the photos calibrate the int8 graph)")
    int8 = (
        Int8Request(tuple(args.calibration), args.calibration_count, args.min_agreement)
        if args.int8
        else None
    )
    onnx = args.onnx or args.int8
    info = export(args.checkpoint, args.out_dir, weights=args.weights, onnx=onnx, fp16=args.fp16, int8=int8)
    print(
        f"wrote {', '.join(info['files'])} to {args.out_dir}"
        + (f"; ONNX Runtime matches PyTorch within {info['onnx_max_abs_diff']:.1e}" if onnx else "")
        + (f"; the fp16 graph within {info['onnx_fp16_max_abs_diff']:.1e}" if args.fp16 else "")
    )
    if int8:
        q = info["int8"]
        print(
            f"int8: {q['method']} quantisation ({q['settings']}) calibrated on {q['calibration_images']} "
            f"images; on {q['held_images']} held images its masks agree with the fp32 graph's at mean IoU "
            f"{q['agreement_mean_iou']:.4f} (lowest {q['agreement_min_iou']:.4f}, threshold "
            f"{q['min_agreement']:g}); batch 1 at {q['input_size'][0]} px, {q['threads']} threads: fp32 "
            f"{q['fp32_images_per_s']:.1f} images/s, int8 {q['int8_images_per_s']:.1f} images/s "
            f"({q['speedup']:.2f}x)"
        )
    return 0


def _push(args) -> int:
    from .serving.hub import push

    info = push(
        args.source,
        args.repo_id,
        token=args.token,
        private=args.private,
        results=args.results,
        datasets=args.datasets,
        license=args.license,
        endpoint=args.endpoint,
    )
    for line in info["left_off"]:
        print(line, file=sys.stderr)
    print(
        f"pushed {', '.join(info['files'])} to {info['repo_url']} ({info['commit_url']}); "
        f"load it with Predictor.from_pretrained({args.repo_id!r}) or 'camodet predict {args.repo_id} ...'"
    )
    return 0


def _app(args) -> int:
    from .serving.app import launch
    from .serving.predictor import load_predictor

    predictor = load_predictor(args.model, weights=args.weights, device=args.device)
    launch(predictor, args.title or method_name(args.model), host=args.host, port=args.port)
    return 0


def _inspect(args) -> int:
    from .runs.inspection import format_inspection, inspect_checkpoint

    report = inspect_checkpoint(args.checkpoint)
    print(json.dumps(report, indent=2, default=str) if args.json else format_inspection(report))
    return report["exit_code"]


def _plan(args) -> int:
    cfg = from_args(args)
    has_data = bool(cfg.data.dataset_path or cfg.data.images)
    cfg.validate(check_paths=has_data)
    if args.effective_batch < 1:
        raise ConfigError(f"--effective-batch must be at least 1 (got {args.effective_batch})")
    from .tune.memory_plan import plan_command

    return plan_command(
        cfg,
        has_data,
        args.gpu_memory,
        args.candidates,
        args.steps,
        args.effective_batch,
        args.lr_scaling,
        args.num_images,
        args.out_dir,
    )


def _tune_lr(args) -> int:
    cfg = from_args(args)
    cfg.validate()
    if not 0 < args.start_lr < args.end_lr:
        raise ConfigError(
            f"--start-lr ({args.start_lr:g}) must be positive and below --end-lr ({args.end_lr:g})"
        )
    if args.steps < 10:
        raise ConfigError(f"--steps must be at least 10 for a curve (got {args.steps})")
    from .runs.folder import RunFolder

    if cfg.run.resume_from == "auto":
        cfg.run.resume_from = RunFolder(cfg.run.checkpoint_dir).auto_resume()
    from .models import check_model
    from .tune.lr_range import lr_range_command

    check_model(cfg.model, cfg.data.img_size)
    train_argv = args.argv[2:]  # after `tune lr`
    return lr_range_command(cfg, args.steps, args.start_lr, args.end_lr, args.out, train_argv, program())


def _sweep(args) -> int:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("camodet sweep needs Optuna: pip install 'camodet[tune]'") from None
    from .tune.study import default_storage

    storage = args.storage or default_storage(args.out)
    if args.summary:
        from .tune.summary import summary_command

        return summary_command(storage, args.study, args.out, program())
    if not args.space:
        raise ConfigError("sweep needs --space SPACE.yaml (or --summary to show a sweep's results)")
    for typed, why in (
        ("run.checkpoint_dir", "each trial's run folder is OUT/trials/trial_N"),
        (
            "run.resume_from",
            "a sweep resumes its own trials; start every trial from weights with --init-from",
        ),
    ):
        if typed in vars(args):
            raise ConfigError(f"sweep: leave out --{typed.split('.')[1].replace('_', '-')}: {why}")
    cfg = from_args(args)
    cfg.validate()
    if cfg.data.val_fraction == 0:
        raise ConfigError("sweep: trials are judged by validation IoU; --val-fraction must be above 0")
    if args.trials < 1 or args.prune_warmup < 1 or args.prune_startup < 0 or args.heartbeat < 1:
        raise ConfigError(
            "sweep: --trials, --prune-warmup and --heartbeat must be at least 1, --prune-startup >= 0"
        )
    from .models import check_model
    from .tune.space import SearchSpace
    from .tune.sweep import SweepOptions, sweep_command

    check_model(cfg.model, cfg.data.img_size)
    space = SearchSpace.load(args.space, cfg)
    opts = SweepOptions(
        args.out,
        storage,
        args.study,
        args.trials,
        args.pruner,
        args.sampler,
        args.sampler_seed,
        args.prune_startup,
        args.prune_warmup,
        args.heartbeat,
    )
    return sweep_command(cfg, space, opts, args.argv, program())


def _report(args) -> int:
    from .evaluation.report import write_report
    from .serving.predictor import Predictor

    load = None if args.no_predictions else functools.partial(Predictor.load, device="cpu")
    path = write_report(args.run_dir, load)
    print(f"wrote {path} and the plots in {os.path.join(args.run_dir, 'report')}/")
    return 0


def _inference_flags(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument(
        "--weights",
        choices=["auto", "ema", "raw"],
        default="auto",
        help="auto: what the run validated with (the EMA weights of an EMA run, in any of its checkpoints)",
    )
    p.add_argument(
        "--tta", nargs="+", metavar="SPEC", help="test-time augmentation: flip and/or scales=0.75,1,1.25"
    )
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and its flags; train's come from the config dataclasses."""
    from .serving.quantize import DEFAULT_CALIBRATION_COUNT, DEFAULT_MIN_AGREEMENT

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
    e.add_argument(
        "checkpoint", nargs="?", help="checkpoint, export folder or Hub id (omit with --preds-dir)"
    )
    e.add_argument("--dataset-path", nargs="+", required=True)
    e.add_argument("--out", help="folder for metrics.json/.csv/.md")
    e.add_argument("--save-preds", help="write 8-bit probability maps as DIR/<dataset>/<stem>.png")
    e.add_argument("--preds-dir", help="score existing maps in DIR/<dataset>/<stem>.png instead of a model")
    e.add_argument(
        "--curves",
        action="store_true",
        help="save PR, F- and E-measure curves (256 thresholds) and their plots in OUT/curves/",
    )
    e.add_argument(
        "--format",
        choices=["markdown", "latex"],
        default="markdown",
        help="latex: S-alpha, weighted F, mean E, MAE to 3 decimals, as papers print them",
    )
    e.add_argument(
        "--minmax",
        action="store_true",
        help="min-max normalise each map before every metric (for papers that do); "
        "stated in the table's legend",
    )
    e.add_argument("--method", help="name of the model in tables and plots (default: its folder's name)")
    e.add_argument(
        "--worst",
        type=int,
        metavar="K",
        help="show the K images with the lowest IoU (image | ground truth | prediction) in OUT/worst.png",
    )
    e.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="processes for the metrics (their CPU work at original resolution dominates); "
        "the table is the one of a single process. Under torchrun/srun each process scores its share",
    )
    _inference_flags(e, batch_size=8)
    e.set_defaults(func=_evaluate)

    pr = sub.add_parser(
        "predict",
        help="masks, probability maps, overlays and cut-outs for your images; "
        "mask and overlay videos for videos and frame folders",
    )
    pr.add_argument("checkpoint", help="checkpoint, export folder or Hub model id (user/name)")
    pr.add_argument("inputs", nargs="+", help="image or video files, folders or glob patterns")
    pr.add_argument("--out", required=True, help="output folder (masks/, probs/, overlays/, cutouts/)")
    pr.add_argument("--threshold", type=float, default=0.5, help="probability that counts as object")
    pr.add_argument(
        "--frames",
        action="store_true",
        help="treat each folder as video frames in frame-number order (one clip per sequence)",
    )
    pr.add_argument(
        "--fps", type=float, default=25.0, help="frame rate of the videos made from --frames folders"
    )
    pr.add_argument(
        "--smooth",
        type=int,
        default=1,
        metavar="K",
        help="videos: average each frame's probabilities with its neighbours over K frames",
    )
    pr.add_argument(
        "--save-frames",
        action="store_true",
        help="videos: also write masks/ and probs/ PNGs per frame beside the videos",
    )
    pr.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: run an export folder's model.onnx in ONNX Runtime on the CPU (or name one of its "
        "graphs, e.g. DIR/model_int8.onnx, as the model; a .onnx model always runs in ONNX Runtime)",
    )
    pr.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave inputs whose outputs are already in --out (files are written whole, under a "
        "temporary name first): a rerun after an interrupted run does only the rest",
    )
    _inference_flags(pr, batch_size=4)
    pr.set_defaults(func=_predict)

    x = sub.add_parser("export", help="model.safetensors + config.json (and --onnx model.onnx)")
    x.add_argument("checkpoint")
    x.add_argument("out_dir")
    x.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx (pip install 'camodet[export]'); dynamic batch, height "
        "and width (multiples of 32)",
    )
    x.add_argument(
        "--fp16",
        action="store_true",
        help="also write model_fp16.onnx: half-precision weights and compute for GPUs, float32 in and out",
    )
    x.add_argument(
        "--int8",
        action="store_true",
        help="also write model_int8.onnx for CPUs: ONNX Runtime's static quantisation calibrated on "
        "--calibration photos, refused below --min-agreement with the fp32 graph (implies --onnx)",
    )
    x.add_argument(
        "--calibration", nargs="+", metavar="IMAGES", help="--int8: folder(s), glob(s) or files of photos"
    )
    x.add_argument(
        "--calibration-count",
        type=int,
        default=DEFAULT_CALIBRATION_COUNT,
        help="--int8: photos to calibrate on (others are held out to check the graph)",
    )
    x.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="--int8: lowest mean IoU between the int8 and fp32 graphs' masks on held photos",
    )
    x.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto")
    x.set_defaults(func=_export)

    hp = sub.add_parser(
        "push",
        help="publish a model on the Hugging Face Hub: model.safetensors, "
        "config.json and a model card (pip install 'camodet[hub]')",
    )
    hp.add_argument("source", help="checkpoint, run folder (its best checkpoint) or export folder")
    hp.add_argument("repo_id", help="user/name on the Hub (created if missing)")
    hp.add_argument(
        "--results",
        help="folder (or metrics.json) of 'camodet evaluate --out' for the card's "
        "table (default: one found beside the run)",
    )
    hp.add_argument(
        "--datasets", nargs="+", help="datasets named in the card's metadata (default: the table's)"
    )
    hp.add_argument("--license", help="license in the card's metadata, e.g. mit or cc-by-nc-4.0")
    hp.add_argument("--private", action="store_true", help="create the repository private")
    hp.add_argument("--token", help="Hub token (default: HF_TOKEN or 'hf auth login')")
    hp.add_argument("--endpoint", help="Hub address (default: HF_ENDPOINT or huggingface.co)")
    hp.set_defaults(func=_push)

    ap = sub.add_parser(
        "app",
        help="web demo on localhost: drop a photo, see mask, overlay and cut-out "
        "(pip install 'camodet[app]')",
    )
    ap.add_argument("model", help="checkpoint, export folder or Hub model id (user/name)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--title", help="name shown on the page (default: the model's folder or id)")
    ap.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto")
    ap.add_argument("--device", default="auto")
    ap.set_defaults(func=_app)

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

    tune = sub.add_parser("tune", help="measure settings: the LR range test").add_subparsers(
        dest="tune_command", required=True
    )
    tl = tune.add_parser(
        "lr",
        help="LR range test from the run's weights in the stage it would train next: suggested LR, "
        "plot and YAML (nothing in the run folder changes)",
    )
    add_arguments(tl)
    tl.add_argument(
        "--steps", type=int, default=100, help="optimizer steps of the test (fewer if it diverges)"
    )
    tl.add_argument("--start-lr", type=float, default=1e-7, help="LR of the first step")
    tl.add_argument("--end-lr", type=float, default=1.0, help="LR of the last step")
    tl.add_argument("--out", default="lr_range", help="folder for lr_range.png, .yaml and .json")
    tl.set_defaults(func=_tune_lr)

    sw = sub.add_parser(
        "sweep",
        help="hyperparameter search with Optuna: each trial a training run, pruned on validation IoU "
        "(pip install 'camodet[tune]')",
    )
    add_arguments(sw)
    sw.add_argument(
        "--space", help="YAML search space: dotted settings -> {low, high, log} or a list of choices"
    )
    sw.add_argument("--trials", type=int, default=10, help="trials this worker runs")
    sw.add_argument(
        "--out", default="sweep", help="sweep folder: trials/trial_N run folders, sweep.db, summary.html"
    )
    sw.add_argument(
        "--storage",
        help="Optuna storage URL (default: sqlite:///OUT/sweep.db; postgresql://... for several machines)",
    )
    sw.add_argument("--study", default="camodet", help="study name in the storage")
    sw.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    sw.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    sw.add_argument("--sampler-seed", type=int, help="seed of the sampler (leave unset with several workers)")
    sw.add_argument(
        "--prune-startup", type=int, default=3, help="trials that finish before the median pruner acts"
    )
    sw.add_argument(
        "--prune-warmup", type=int, default=1, help="epochs every trial trains before it can be pruned"
    )
    sw.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between a worker's heartbeats; a trial silent for two is failed and queued again",
    )
    sw.add_argument(
        "--summary", action="store_true", help="print the trials and the best command, write summary.html"
    )
    sw.set_defaults(func=_sweep)

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
    m = mgrp.add_parser(
        "summary", help="parameters by part and GFLOPs of the model that train builds from these flags"
    )
    add_arguments(m, only={"model", "data.img_size"})
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_model_summary)
    return p


# The errors that end a command with one line instead of a traceback, by the module that defines
# each: looked up among the modules already loaded, since an error can only have been raised by
# a loaded module, and importing them all up front (timm among them) costs seconds per command.
USAGE_ERRORS = {
    "camodet.config": "ConfigError",
    "camodet.data.io": "DataError",
    "camodet.runs.errors": "CheckpointError",
    "camodet.models.backbone": "BackboneError",
    "camodet.serving.export": "ExportError",
    "camodet.serving.fetch": "HubError",
    "camodet.serving.app": "AppError",
    "camodet.launch": "ProcessFailure",
}
DIVERGED_ERRORS = {"camodet.engine.guard": "DivergenceError"}


def _exit_code(e: Exception) -> int | None:
    """EXIT_USAGE or EXIT_DIVERGED for an expected failure, None for a bug (shown in full)."""
    for errors, code in ((USAGE_ERRORS, EXIT_USAGE), (DIVERGED_ERRORS, EXIT_DIVERGED)):
        loaded = tuple(getattr(sys.modules[m], name) for m, name in errors.items() if m in sys.modules)
        if isinstance(e, loaded):
            return code
    return None


def main(argv=None) -> int:
    """Run one subcommand; expected failures print one line and return an exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except Exception as e:
        code = _exit_code(e)
        if code is None:
            raise
        print(f"camodet: error: {e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("camodet: interrupted", file=sys.stderr)
        return 130
