"""`camodet sweep`: hyperparameter search with Optuna, each trial a real `camodet train` run in its
own folder (OUT/trials/trial_NNNN) that reports its validation IoU every epoch, so that the pruner
can stop hopeless trials early.

Interruption: Ctrl-C or SIGTERM inside a trial stops its training as `train` does (a resumable
last.pth); the trial is marked failed and queued again with the same settings and folder, and the
next `camodet sweep` (on any worker) resumes it from that last.pth. So is a trial whose training
raised an error that is no result (an unreadable file, a full disk; divergence is a result): the
worker ends with the error in one line, and after at most MAX_RETRIES attempts the trial is left
failed. A worker that vanished (kill -9, a lost node) stops sending Optuna's heartbeat: the next
worker marks its trial failed and queues it the same way. Optuna's storage hands each queued or new
trial to exactly one worker.

Under torchrun or srun one worker is several processes and each trial one multi-process run: rank 0
talks to Optuna and announces each trial's settings, and every rank trains it (DDP on the launch's
process group, which the trials share); the pruner's verdict reaches the other ranks as a stop
request does, so they stop at the same epoch."""

import contextlib
import dataclasses
import logging
import math
import os
import signal
from dataclasses import dataclass

from ..config import TrainConfig
from ..engine.hooks import Hook
from ..errors import ConfigError
from ..fields import flags
from ..launch import Dist, broadcast_object
from ..options import SweepOptions, SweepSettings
from ..runs import history
from ..runs.folder import BEST_METRIC, RunFolder
from .space import SearchSpace, apply
from .study import MAX_RETRIES, RUN_DIR, SETTINGS, base_settings, default_storage, open_study, retry_callback

log = logging.getLogger("camodet")

PRUNED = "pruned"  # the trainer's stop reason when the pruner gave up on a trial


class SweepStopped(Exception):
    """The sweep was stopped by a signal (`args[0]`: its name); the running trial is queued again."""


class PruningReporter(Hook):
    """Epoch hook (after the checkpoint, the record and the trackers): the epoch's validation IoU to
    the trial; when the pruner gives up on it, the trainer is asked to stop as for a signal, so the
    run ends with its folder complete and consistent, on every rank."""

    def __init__(self, trial):
        self.trial = trial

    def after_epoch(self, trainer, result) -> None:
        iou = result.val.get(BEST_METRIC)
        if iou is None or not math.isfinite(iou):
            return
        self.trial.report(iou, result.epoch)
        # After the last epoch there is nothing left to save: the trial completes with its result.
        if result.epoch < trainer.cfg.stages.epochs and self.trial.should_prune():
            log.info(
                f"trial {self.trial.number}: pruned after epoch {result.epoch} ({BEST_METRIC} {iou:.4f})"
            )
            trainer.stop.request(PRUNED)


def report_history(trial, folder: RunFolder) -> int:
    """A resumed trial reports the epochs its earlier attempt trained (from metrics.jsonl, the last
    record of each epoch), so that the pruner sees the whole curve. Returns how many."""
    scores = {}
    for r in history.read(folder.metrics):
        if r.get("type") == "epoch" and BEST_METRIC in (r.get("val") or {}):
            scores[int(r["epoch"])] = float(r["val"][BEST_METRIC])
    for epoch, iou in sorted(scores.items()):
        if math.isfinite(iou):
            trial.report(iou, epoch)
    return len(scores)


@dataclass(frozen=True)
class TrialPlan:
    """What every process of a trial needs to build the same run (Optuna's trial is rank 0's)."""

    number: int
    settings: dict
    run_dir: str
    resume: str | None  # its last.pth where an earlier attempt left one


def trial_config(base: TrainConfig, plan: TrialPlan) -> TrainConfig:
    cfg = apply(base, plan.settings, source=f"trial {plan.number}'s settings")
    # An attempt that saved nothing left at most its config and log: that folder starts over.
    cfg.run.checkpoint_dir, cfg.run.resume_from = plan.run_dir, plan.resume
    cfg.run.overwrite = plan.resume is None
    return cfg.validate()


class TrialRunner:
    """The objective: one trial = one training run of the base configuration with the trial's
    settings, in its own folder (resumed from its last.pth when an earlier attempt left one)."""

    def __init__(self, base: TrainConfig, space: SearchSpace, out_dir: str, d: Dist = Dist()):
        self.base, self.space, self.d = base, space, d
        self.trials_dir = os.path.join(out_dir, "trials")
        self.current: int | None = None  # the trial this worker runs, or that stopped unfinished

    def configure(self, trial) -> TrainConfig:
        """The trial's settings (a retried trial keeps its own) and folder, announced to the
        launch's other processes; its earlier attempt's epochs reported when it resumes."""
        settings = self.space.suggest(trial)
        run_dir = trial.user_attrs.get(RUN_DIR) or os.path.join(self.trials_dir, f"trial_{trial.number:04d}")
        trial.set_user_attr(RUN_DIR, run_dir)
        trial.set_user_attr(SETTINGS, settings)
        folder = RunFolder(run_dir)
        plan = TrialPlan(
            trial.number, settings, run_dir, folder.last if os.path.isfile(folder.last) else None
        )
        broadcast_object(plan, self.d)  # the launch's other processes train it with this one
        cfg = trial_config(self.base, plan)
        if plan.resume:
            n = report_history(trial, folder)
            log.info(
                f"trial {trial.number}: resuming {plan.resume} ({n} epoch(s) trained by an earlier attempt)"
            )
        return cfg

    def __call__(self, trial) -> float:
        """The trial's result; `current` stays set when it stops without one (a signal, an error),
        so that it is queued again."""
        import optuna

        from ..engine.guard import DivergenceError

        self.current = trial.number
        try:
            iou = self.train(trial)
        except optuna.TrialPruned:
            self.current = None  # a result: the trial is done
            raise
        except DivergenceError:
            self.current = None
            log.warning(f"trial {trial.number} diverged: recorded as failed (a result); the sweep goes on")
            raise
        self.current = None
        return iou

    def train(self, trial) -> float:
        """The trial trained (its pruning reported each epoch): its best validation IoU; a pruned,
        stopped or unvalidated trial raises instead (TrialPruned, SweepStopped, ConfigError)."""
        import optuna

        from ..engine.trainer import train

        cfg = self.configure(trial)
        log.info(f"trial {trial.number}: {trial.user_attrs[SETTINGS]} in {cfg.run.checkpoint_dir}")
        state = train(cfg, hooks=[PruningReporter(trial)])
        trial.set_user_attr("epochs", state.epoch)
        trial.set_user_attr("best_epoch", state.best_epoch)
        if state.interrupted == PRUNED:
            raise optuna.TrialPruned(f"pruned after epoch {state.epoch}")
        if state.interrupted:
            raise SweepStopped(state.interrupted)
        if not math.isfinite(state.best_iou):
            raise ConfigError(f"trial {trial.number} validated nothing; the sweep needs --val-fraction > 0")
        return state.best_iou


def make_sampler(opts: SweepSettings):
    import optuna

    if opts.sampler == "random":
        return optuna.samplers.RandomSampler(seed=opts.sampler_seed)
    return optuna.samplers.TPESampler(seed=opts.sampler_seed)


def make_pruner(opts: SweepSettings, epochs: int):
    import optuna

    if opts.pruner == "none":
        return optuna.pruners.NopPruner()
    # Optuna's steps are camodet's epochs, numbered from 1 (the epoch a report is made after), and
    # both pruners first judge a trial at step W: after it has completed its W warmup epochs.
    warmup = min(opts.prune_warmup, epochs)  # Hyperband refuses a first rung beyond the last epoch
    if opts.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup, max_resource=epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=opts.prune_startup, n_warmup_steps=warmup)


def requeue(study, number: int | None) -> bool:
    """Queue the interrupted trial again (same settings and folder), as Optuna's heartbeat does for
    a vanished worker's; only the worker that ran it does this, so it is queued once."""
    if number is None:
        return False
    import optuna

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state != optuna.trial.TrialState.FAIL:
        return False
    retry_callback()(study, trial)
    return len(trial.system_attrs.get("retry_history", [])) < MAX_RETRIES  # the callback's own rule


def retried(queued: bool) -> str:
    if queued:
        return "is queued again: the same sweep command resumes it from its last.pth"
    return f"is left failed: it was tried {MAX_RETRIES + 1} times"


def raise_on_sigterm(signum, frame):
    raise SweepStopped(signal.Signals(signum).name)


def follow(base: TrainConfig, d: Dist) -> None:
    """A launch's other processes: train each trial rank 0 announces, until it announces none.
    A trial stopped by a signal stops them as it stops rank 0 (the trainer's ranks agree on it)."""
    from ..engine.guard import DivergenceError
    from ..engine.trainer import train

    while (plan := broadcast_object(None, d)) is not None:
        try:
            state = train(trial_config(base, plan))
        except DivergenceError:  # every rank diverges together; rank 0 records the trial as failed
            continue
        if state.interrupted and state.interrupted != PRUNED:
            raise SweepStopped(state.interrupted)


class NoTrialFailure(logging.Filter):
    """Optuna's report of a failed trial (its error with the traceback, then its value): the sweep
    says it in one line of its own (a diverged trial, a stopped or failed one) and the error itself
    reaches the user once, from the command (one line, or in full for a bug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and " failed with " in message)


@contextlib.contextmanager
def no_optuna_trial_failures():
    optimize_log = logging.getLogger("optuna.study._optimize")  # where Optuna reports each trial
    quiet = NoTrialFailure()
    optimize_log.addFilter(quiet)
    try:
        yield
    finally:
        optimize_log.removeFilter(quiet)


def run_sweep(
    base: TrainConfig, space: SearchSpace, opts: SweepSettings, train_flags: list[str], d: Dist = Dist()
):
    """Run `opts.trials` trials of the study in this worker (other workers may share it): in this
    process, or with the launch's other processes when `d` has several. Returns the study (None on
    ranks other than 0); raises SweepStopped after a signal, once the running trial is queued again."""
    if not d.is_main:
        previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
        try:
            follow(base, d)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return None
    import warnings

    import optuna

    from ..engine.guard import DivergenceError

    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if opts.storage == default_storage(opts.out):  # the SQLite file's folder must exist first
        os.makedirs(opts.out, exist_ok=True)
    sampler, pruner = make_sampler(opts), make_pruner(opts, base.stages.epochs)
    shared = base_settings(base, space)  # what the study's other workers must train with
    study = open_study(opts.storage, opts.study, space, sampler, pruner, train_flags, opts.heartbeat, shared)
    os.makedirs(opts.out, exist_ok=True)
    runner = TrialRunner(base, space, opts.out, d)
    # Outside a trial's training (loading data, asking Optuna), SIGTERM stops the sweep as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        # A diverged trial is a result (this setting does not train), not a reason to stop the sweep.
        with no_optuna_trial_failures():
            study.optimize(runner, n_trials=opts.trials, catch=(DivergenceError,), gc_after_trial=True)
        broadcast_object(None, d)  # no more trials: the other processes return
    except (SweepStopped, KeyboardInterrupt) as e:
        queued = requeue(study, runner.current)
        name = e.args[0] if isinstance(e, SweepStopped) and e.args else "SIGINT"
        raise SweepStopped(name, runner.current if queued else None) from None
    except Exception:  # the trial's error, for the command to report (one line, or in full for a bug)
        if runner.current is not None:
            log.warning(f"trial {runner.current} failed and {retried(requeue(study, runner.current))}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return study


def sweep_command(o: SweepOptions, typed: frozenset, argv: list[str], program: list[str]):
    """`camodet sweep` (argv: its command line after the program): the checks that need no
    training, then the trials, in this process or with the launch's others under torchrun/srun,
    then the summary; after a signal, the command that continues and the stopped command's exit
    status. `typed`: the settings typed on the command line (some are the sweep's to set)."""
    import shlex
    import sys

    import torch

    from ..engine.interrupt import stopped_exit_code
    from ..launch import init, shutdown
    from .commands import drop_flags
    from .summary import summary_command

    opts = check_sweep(o, typed)
    if opts.summary:
        return summary_command(opts.storage, opts.study, opts.out, program)
    base = o.train
    space = SearchSpace.load(opts.space, base)
    d = init("cuda" if base.run.device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        run_sweep(base, space, opts, drop_flags(argv[1:], flags(SweepSettings)), d)
    except SweepStopped as e:
        name, queued = e.args[0], e.args[1] if len(e.args) > 1 else None
        again = (
            f"trial {queued} is queued again and resumes from its last.pth; " if queued is not None else ""
        )
        if d.is_main:
            print(
                f"sweep stopped by {name}: {again}continue with:\n  {shlex.join([*program, *argv])}",
                file=sys.stderr,
            )
        return stopped_exit_code(name)
    finally:
        shutdown(d)
    return summary_command(opts.storage, opts.study, opts.out, program) if d.is_main else 0


def check_sweep(o: SweepOptions, typed: frozenset) -> SweepSettings:
    """The sweep's settings with the storage resolved, once what makes no sense is refused: no
    Optuna, no --space, the flags a sweep sets itself, no validation to judge trials by."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("camodet sweep needs Optuna: pip install 'camodet[tune]'") from None
    opts = dataclasses.replace(o.search, storage=o.search.storage or default_storage(o.search.out))
    if opts.summary:
        return opts
    if not opts.space:
        raise ConfigError("sweep needs --space SPACE.yaml (or --summary to show a sweep's results)")
    for setting, why in (
        ("run.checkpoint_dir", "each trial's run folder is OUT/trials/trial_N"),
        (
            "run.resume_from",
            "a sweep resumes its own trials; start every trial from weights with --init-from",
        ),
    ):
        if setting in typed:
            raise ConfigError(f"sweep: leave out --{setting.split('.')[1].replace('_', '-')}: {why}")
    o.train.validate()
    if o.train.data.val_fraction == 0:
        raise ConfigError("sweep: trials are judged by validation IoU; --val-fraction must be above 0")
    from ..models import check_model

    check_model(o.train.model, o.train.data.img_size)
    return opts
