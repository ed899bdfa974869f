"""TrackerHook: the trainer's hook that forwards the run to --tracker wandb/mlflow. It reads
what the run already records (config, metrics.jsonl's epoch records and events), so the
trackers hold the same fields as the file. Rank 0 only; the trackers' run ids are kept in
RUN/trackers.json so that a --resume-from in the same folder continues the same tracked runs,
while a resume into another folder (a fork: the seed workflow's warm restart) starts its own,
linked to the one it came from by the tags camodet.parent_run and camodet.parent_folder.
`camodet train` (engine.trainer.train) gives it to every run it trains, sweep trials included."""

import functools
import json
import logging
import os
import tempfile

from ..runs.folder import TRACKERS, RunFolder
from .trackers import MlflowTracker, TrackerUnavailable, WandbTracker, flat_numbers, one_line

log = logging.getLogger("camodet")

PARENT_RUN, PARENT_FOLDER = "camodet.parent_run", "camodet.parent_folder"  # a fork's tags


class TrackerHook:
    """Start the trackers before training (continuing their runs after a resume), send each new
    record of the run's history after every epoch, and after training send the rest, the final
    artefacts (a finished run's export and HTML report) and the run's end status: the three
    points of the engine's Hook protocol. The run's config, folder, history and counters are the
    trainer's, taken as training starts."""

    def __init__(self):
        self.trackers: list = []

    def before_train(self, trainer) -> None:
        self.cfg, self.folder, self.history, self.state = (
            trainer.cfg,
            trainer.folder,
            trainer.history,
            trainer.state,
        )
        self.sent = self.history.loaded  # the records of earlier attempts went out with them
        if self.cfg.run.tracker:
            self.trackers = [t for t in map(self.start, self.cfg.run.tracker) if t is not None]
            if self.trackers:
                with open(self.folder.file(TRACKERS), "w") as fh:
                    json.dump({t.name: t.ids() for t in self.trackers}, fh, indent=2)

    def start(self, name: str):
        """One tracker: on a resume in place, continuing the run this folder's trackers.json names;
        otherwise a new run, tagged with the run it was forked from when the resumed checkpoint
        lies in another folder. None (and one warning) when it cannot start."""
        cfg, folder = self.cfg, self.folder.path
        resumed = cfg.run.resume_from if cfg.run.resume_from != "auto" else None
        earlier = previous_ids(resumed).get(name, {})
        in_place = self.folder.holds(resumed)
        run_id = earlier.get("run_id") if in_place else None
        tags = fork_tags(resumed, earlier) if resumed and not in_place else {}
        run_name = os.path.basename(os.path.abspath(folder))
        try:
            if name == "mlflow":
                tracker = MlflowTracker(folder, cfg.run.tracking_uri, run_id, run_name, cfg.to_dict(), tags)
            else:
                tracker = WandbTracker(folder, run_id, run_name, cfg.to_dict(), tags)
        except Exception as e:  # TrackerUnavailable, or any failure of its first calls: not the run's
            reason = str(e) if isinstance(e, TrackerUnavailable) else one_line(e)
            log.warning(f"--tracker {name}: could not start ({reason}); training goes on without it")
            return None
        log.info(f"--tracker {name}: {started(tracker, run_id, tags)}")
        return tracker

    def after_epoch(self, trainer, result) -> None:
        self.send(result.epoch)

    def send(self, epoch: int) -> None:
        """The history's records since the last send: events, then the epoch's metrics."""
        records = self.history.records
        new, self.sent = records[self.sent :], len(records)
        events = [r for r in new if r.get("type") != "epoch"]
        if events:
            everything = [r for r in records if r.get("type") != "epoch"]
            self.each(lambda t: t.events(epoch, events, everything))
        for record in (r for r in new if r.get("type") == "epoch"):
            metrics = flat_numbers({k: v for k, v in record.items() if k not in ("type", "epoch")})
            self.each(lambda t, r=record, m=metrics: t.epoch(r["epoch"], m))

    def each(self, call) -> None:
        """`call(tracker)` on every tracker; one that fails is dropped with a warning."""
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # a tracker's failure never stops the training
                log.warning(f"--tracker {tracker.name}: {one_line(e)}; no more logging to it in this run")
                self.trackers.remove(tracker)

    def after_train(self, trainer, error: BaseException | None) -> None:
        if not self.trackers:
            return
        self.send(self.state.epoch)
        status = "failed" if error is not None else "interrupted" if self.state.interrupted else "finished"
        if status == "finished":
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    found = final_artefacts(self.folder, tmp)
                    self.each(lambda t: t.artefacts(*found))
            except Exception as e:  # the artefacts are the trackers', never the run's result
                log.warning(f"--tracker: skipped the artefacts ({one_line(e)})")
        self.each(lambda t: t.finish(status))


def started(tracker, run_id: str | None, tags: dict) -> str:
    """What a tracker's start did, for the log: continued its run, forked one, or a new run."""
    new = tracker.ids()["run_id"]
    if tracker.continued:
        return f"continuing run {new}"
    if run_id:
        return f"logging to run {new} (the store no longer holds run {run_id})"
    if tags:
        parent = f"run {tags[PARENT_RUN]} of " if PARENT_RUN in tags else ""
        return f"logging to run {new}, a fork of {parent}{tags[PARENT_FOLDER]}"
    return f"logging to run {new}"


def fork_tags(resume_from: str, earlier: dict) -> dict:
    """The link of a fork's new run to where it came from: the resumed checkpoint's folder, and
    the run this tracker logged that folder to (where it did)."""
    tags = {PARENT_FOLDER: os.path.dirname(os.path.abspath(resume_from))}
    if earlier.get("run_id"):
        tags[PARENT_RUN] = earlier["run_id"]
    return tags


def previous_ids(resume_from: str | None) -> dict:
    """trackers.json of the folder the resumed checkpoint lies in ({} when there is none)."""
    if not resume_from or resume_from == "auto":
        return {}
    path = os.path.join(os.path.dirname(os.path.abspath(resume_from)), TRACKERS)
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def final_artefacts(folder: RunFolder, tmp: str) -> tuple[str | None, str | None, str | None]:
    """(export folder, report.html, its plots' folder) of a finished run; what cannot be made is
    one line and None. The export is of the best checkpoint (else the last), with model.onnx
    when the export extra is installed."""
    from ..evaluation.report import write_report
    from ..serving.export import export
    from ..serving.predictor import Predictor

    export_dir = report = None
    weights = folder.newest_weights()
    if weights:
        onnx = onnx_available()
        if not onnx:
            log.info("--tracker: the export artefact has no model.onnx (pip install 'camodet[export]')")
        try:
            export(weights, os.path.join(tmp, "export"), onnx=onnx)
            export_dir = os.path.join(tmp, "export")
        except Exception as e:  # an artefact, not the run's result
            log.warning(f"--tracker: skipped the export artefact ({one_line(e)})")
    try:
        report = write_report(folder.path, functools.partial(Predictor.load, device="cpu"))
    except Exception as e:
        log.warning(f"--tracker: skipped the report artefact ({one_line(e)})")
    return export_dir, report, folder.report_dir if report else None
