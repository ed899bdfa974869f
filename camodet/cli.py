"""`camodet` subcommands. Each is an options dataclass (options.py; train's is TrainConfig) and a
handler that takes it; every parser is generated from the dataclasses (fields.add_options), so a
flag is declared once, with its help, type, choices and range. Heavy modules load inside the
handlers, after the cheap checks."""

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__
from .config import TrainConfig
from .errors import CamodetError
from .fields import add_options, add_version, leaves, options_from_args, reference
from .options import (
    AppOptions,
    DataCheckOptions,
    EvaluateOptions,
    ExportOptions,
    InspectOptions,
    PlanOptions,
    PredictOptions,
    PushOptions,
    ReportOptions,
    SummaryOptions,
    SweepOptions,
    SynthOptions,
    TuneLROptions,
)
from .runs.resume import program, resume_command


@dataclass(frozen=True)
class Call:
    """How a command was invoked: its words after `camodet`, and the settings typed on them."""

    argv: list[str]
    typed: frozenset


# -- training -----------------------------------------------------------------------------------


def _train(cfg: TrainConfig, call: Call) -> int:
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
            f"  {resume_command(call.argv, last)}",
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


def _plan(o: PlanOptions, call: Call) -> int:
    has_data = bool(o.train.data.dataset_path or o.train.data.images)
    o.train.validate(check_paths=has_data)
    from .tune.memory_plan import plan_command

    return plan_command(o, has_data)


def _tune_lr(o: TuneLROptions, call: Call) -> int:
    o.train.validate()
    o.test.validate()
    from .runs.folder import RunFolder

    if o.train.run.resume_from == "auto":
        o.train.run.resume_from = RunFolder(o.train.run.checkpoint_dir).auto_resume()
    from .models import check_model
    from .tune.lr_range import lr_range_command

    check_model(o.train.model, o.train.data.img_size)
    return lr_range_command(o, call.argv[2:], program())  # the train flags come after `tune lr`


def _sweep(o: SweepOptions, call: Call) -> int:
    from .tune.sweep import sweep_command

    return sweep_command(o, call.typed, call.argv[1:], program())


# -- data and models ----------------------------------------------------------------------------


def _synth(o: SynthOptions, call: Call) -> int:
    from .data.synth import write_dataset

    o.validate()
    info = write_dataset(
        o.out,
        o.train,
        o.test,
        seed=o.seed,
        noncam_every=o.noncam_every,
        size_range=(o.min_size, o.max_size),
        workers=o.workers or os.cpu_count(),
    )
    print(
        f"wrote a COD10K-v3-layout synthetic dataset to {info['root']}: {info['train']} train, "
        f"{info['test']} test images (seed {info['seed']})"
    )
    return 0


def _data_check(o: DataCheckOptions, call: Call) -> int:
    from .data.check import check_dataset, format_report

    report = check_dataset(o.path, decode=not o.headers_only)
    print(json.dumps(report, indent=2) if o.json else format_report(report))
    return 1 if report["problems"] else 0


def _model_summary(o: SummaryOptions, call: Call) -> int:
    from .models import build_model, check_model
    from .models.summary import format_summary, summarise

    cfg = o.train
    cfg.validate(check_paths=False)
    check_model(cfg.model, cfg.data.img_size)
    s = summarise(build_model(cfg.model), cfg.data.img_size)
    print(json.dumps(s, indent=2) if o.json else format_summary(s, cfg.model.backbone))
    return 0


def _inspect(o: InspectOptions, call: Call) -> int:
    from .runs.inspection import format_inspection, inspect_checkpoint

    report = inspect_checkpoint(o.checkpoint)
    print(json.dumps(report, indent=2, default=str) if o.json else format_inspection(report))
    return report["exit_code"]


def _report(o: ReportOptions, call: Call) -> int:
    import functools

    from .evaluation.report import write_report
    from .serving.predictor import Predictor

    load = functools.partial(Predictor.load, device="cpu") if o.predictions else None
    path = write_report(o.run_dir, load)
    print(f"wrote {path} and the plots in {os.path.join(o.run_dir, 'report')}/")
    return 0


# -- inference ----------------------------------------------------------------------------------

# What the one line says when one of several processes went (launch.PeerWatch)
EVALUATE_RERUN = "evaluate writes nothing before the end: run it again once the cause is fixed."
PREDICT_RERUN = "The outputs written so far stay: --skip-existing does only the rest."


def _evaluate(o: EvaluateOptions, call: Call) -> int:
    from .evaluation.protocol import evaluate, evaluate_preds_dir, report_results
    from .evaluation.worst import WorstImages
    from .launch import shutdown, start
    from .serving.fetch import model_name

    o.validate()
    curves: dict | None = {} if o.curves else None
    worst = WorstImages(o.worst) if o.worst is not None else None
    # under torchrun or srun: this process's share, on its own GPU
    d, device = start(o.inference.device, rerun=EVALUATE_RERUN)
    if o.preds_dir:
        results = evaluate_preds_dir(o, curves, worst, d)
        scored = {"preds_dir": os.path.abspath(o.preds_dir)}
    else:
        from .serving.export import provenance
        from .serving.fetch import resolve
        from .serving.predictor import TTA, load_predictor

        local = resolve(o.checkpoint)
        inf = o.inference
        predictor = load_predictor(local, weights=inf.weights, device=str(device), tta=TTA.parse(inf.tta))
        scored = provenance(o.checkpoint, local, predictor)
        results = evaluate(predictor, o, curves, worst, d)
        if o.save_preds and d.is_main:
            print(f"wrote probability maps to {o.save_preds}/<dataset>/<stem>.png")
    shutdown(d)
    if d.is_main:  # rank 0 holds every process's scores and prints the table
        method = o.method or model_name(o.checkpoint or o.preds_dir)
        report_results(o, results, scored, method, curves, worst)
    return 0


def _predict(o: PredictOptions, call: Call) -> int:
    from .launch import Shard, gather_objects, shutdown, start
    from .serving.predict import describe_files, expand_patterns, predict_files
    from .serving.predictor import TTA, load_predictor
    from .serving.video import describe_clip, is_video, predict_clips

    # a pattern's matches are sorted like the inputs named one by one ('clips/*.mp4' are videos)
    inputs = expand_patterns(o.inputs, folders=o.frames)
    videos = [i for i in inputs if os.path.isfile(i) and is_video(i)]
    folders = [i for i in inputs if o.frames and os.path.isdir(i)]
    images = [i for i in inputs if i not in videos and i not in folders]
    # under torchrun or srun: this process's share, on its own GPU
    d, device = start(o.inference.device, rerun=PREDICT_RERUN)
    inf = o.inference
    predictor = load_predictor(
        o.checkpoint, weights=inf.weights, device=str(device), tta=TTA.parse(inf.tta), runtime=o.runtime
    )
    lines, problems = [], []
    if images:
        parts = gather_objects(predict_files(predictor, images, o, d), d)
        lines.append(describe_files(parts, o.out, d.world if d.enabled else 1))
        problems += [item for p in parts for item in p["problems"]]
    if videos or folders:
        clips = predict_clips(predictor, videos, folders, o, Shard.of(d))
        for rank, (done, failed) in enumerate(gather_objects(clips, d)):
            lines += [
                describe_clip(c, o.save_frames) + (f" [process {rank}]" if d.enabled else "") for c in done
            ]
            problems += failed
    shutdown(d)
    if d.is_main:  # every process's outcome, printed once
        print("\n".join(lines))
        for item, why in problems:
            print(f"  skipped {item}: {why}", file=sys.stderr)
    return 1 if problems else 0


def _export(o: ExportOptions, call: Call) -> int:
    from .serving.export import Int8Request, describe_export, export

    o.validate()
    int8 = Int8Request(tuple(o.calibration), o.calibration_count, o.min_agreement) if o.int8 else None
    onnx = o.onnx or o.int8
    info = export(o.checkpoint, o.out_dir, weights=o.inference.weights, onnx=onnx, fp16=o.fp16, int8=int8)
    print(describe_export(info, o.out_dir))
    return 0


def _push(o: PushOptions, call: Call) -> int:
    from .serving.hub import push

    info = push(o)
    for line in info["left_off"]:
        print(line, file=sys.stderr)
    print(
        f"pushed {', '.join(info['files'])} to {info['repo_url']} ({info['commit_url']}); "
        f"load it with Predictor.from_pretrained({o.repo_id!r}) or 'camodet predict {o.repo_id} ...'"
    )
    return 0


def _app(o: AppOptions, call: Call) -> int:
    from .serving.app import launch
    from .serving.fetch import model_name
    from .serving.predictor import load_predictor

    predictor = load_predictor(o.model, weights=o.inference.weights, device=o.inference.device)
    launch(predictor, o.title or model_name(o.model), host=o.host, port=o.port)
    return 0


def _help(o, call: Call) -> int:
    print(reference(COMMANDS))
    return 0


# -- the commands -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A subcommand: its words, its options class, its handler and its one-line help (by default
    the options class's, whose docstring begins "`camodet NAME`: what it does.")."""

    name: str
    options: type | None
    run: Callable
    text: str = ""

    @property
    def help(self) -> str:
        if self.text:
            return self.text
        first = " ".join(self.options.__doc__.strip().split("\n\n")[0].split())
        return first.split(": ", 1)[1].rstrip(".") if first.startswith("`") else first


COMMANDS = (
    Command("train", TrainConfig, _train, "train a detector (two stages)"),
    Command("synth", SynthOptions, _synth),
    Command("data check", DataCheckOptions, _data_check),
    Command("evaluate", EvaluateOptions, _evaluate),
    Command("predict", PredictOptions, _predict),
    Command("export", ExportOptions, _export),
    Command("push", PushOptions, _push),
    Command("app", AppOptions, _app),
    Command("plan", PlanOptions, _plan),
    Command("tune lr", TuneLROptions, _tune_lr),
    Command("sweep", SweepOptions, _sweep),
    Command("report", ReportOptions, _report),
    Command("inspect", InspectOptions, _inspect),
    Command("model summary", SummaryOptions, _model_summary),
    Command("help", None, _help, "the reference of every command's options, as README's tables"),
)
GROUPS = {"data": "dataset tools", "model": "model tools", "tune": "measure settings: the LR range test"}


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand's parser, generated from its options class."""
    p = argparse.ArgumentParser(
        prog="camodet", description="Camouflaged object detection: train, evaluate, ship."
    )
    add_version(p, f"camodet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    groups: dict = {}
    for command in COMMANDS:
        words = command.name.split()
        where = sub
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=GROUPS[words[0]])
                groups[words[0]] = group.add_subparsers(dest=f"{words[0]}_command", required=True)
            where = groups[words[0]]
        q = where.add_parser(words[-1], help=command.help, description=command.help)
        if command.options is not None:
            add_options(q, command.options)
        q.set_defaults(command_spec=command)
    return p


def parse(argv: list[str]):
    """(command, its options, the settings typed) of a command line."""
    args = build_parser().parse_args(argv)
    command = args.command_spec
    if command.options is None:
        return command, None, frozenset()
    typed = frozenset(vars(args)) & {leaf.dest for leaf in leaves(command.options)}
    return command, options_from_args(command.options, args, "camodet " + command.name), typed


def main(argv=None) -> int:
    """Run one subcommand; expected failures print one line and return their exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command, options, typed = parse(argv)
        if options is not None:
            from .models.device import check_devices  # every --device, once, before any work

            check_devices(options)
        return command.run(options, Call(argv, typed))
    except CamodetError as e:
        print(f"camodet: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("camodet: interrupted", file=sys.stderr)
        return 130
