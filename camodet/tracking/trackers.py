"""The two trackers, each behind the same four calls: start (or continue a run by its id),
log the epoch's metrics, log events, and finish with the artefacts. Offline by default:
W&B in offline mode (WANDB_MODE=offline unless the user set it), MLflow to a SQLite store in
the run folder (unless --tracking-uri or MLFLOW_TRACKING_URI says otherwise)."""

import contextlib
import json
import os
import pathlib
import sqlite3
import uuid

TRACKERS = ("wandb", "mlflow")
PROJECT = "camodet"  # the W&B project and MLflow experiment (WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME win)
MLFLOW_STORE, MLFLOW_ARTIFACTS, WANDB_DIR = "mlflow.db", "mlflow-artifacts", "wandb"


class TrackerUnavailable(RuntimeError):
    """A tracker that cannot start (not installed, bad URI); the message is one line."""


def flat_numbers(record: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics.jsonl record, nested ones as 'val/IoU' and lists as 'expert_usage/0'
    (trackers chart numbers; the record's text fields stay in metrics.jsonl)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(flat_numbers(value, name + "/"))
        elif isinstance(value, (list, tuple)):
            out.update(flat_numbers({str(i): v for i, v in enumerate(value)}, name + "/"))
    return out


class MlflowTracker:
    """One MLflow run through MlflowClient (no global active run, so nothing leaks into the
    user's own mlflow calls); params once, metrics with the epoch as step. `tags` (a fork's link
    to its parent run) go on a new run."""

    name = "mlflow"

    def __init__(
        self,
        folder: str,
        uri: str | None,
        run_id: str | None,
        run_name: str,
        config: dict,
        tags: dict | None = None,
    ):
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric, Param
        except ImportError:
            raise TrackerUnavailable("mlflow is not installed: pip install 'camodet[mlflow]'") from None
        self.Metric, self.Param = Metric, Param
        local = os.path.abspath(os.path.join(folder, MLFLOW_STORE))
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local}"
        try:
            self.client = client = MlflowClient(tracking_uri=self.uri)
            self.run_id = self.continue_run(run_id) if run_id else None
            self.continued = self.run_id is not None
            if self.run_id is None:
                self.run_id = client.create_run(
                    self.experiment(folder), run_name=run_name, tags=tags or None
                ).info.run_id
                params = [Param(k, str(v)[:6000]) for k, v in flat_config(config).items()]
                client.log_batch(self.run_id, params=params)
            self.keep_artefacts_in(folder)
            client.log_dict(self.run_id, config, "config.json")
        except Exception as e:  # a bad URI or an unreachable server surfaces as many types
            raise TrackerUnavailable(f"mlflow at {self.uri}: {one_line(e)}") from None

    def local_store(self) -> str | None:
        """The SQLite file of a store whose artefacts camodet keeps in the run folder; None where
        MLFLOW_TRACKING_URI or a server decides where they go."""
        if self.uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
            return self.uri[len("sqlite:///") :]
        return None

    def experiment(self, folder: str) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # a local store keeps its artefacts beside it, not in ./mlruns of wherever training started
        where = artefact_root(folder) if self.local_store() else None
        return self.client.create_experiment(name, artifact_location=where)

    def keep_artefacts_in(self, folder: str) -> None:
        """Point a local store's run at FOLDER/mlflow-artifacts/RUN_ID/artifacts, the folder as it
        is now: MLflow keeps the absolute location a run was created with, which after the folder
        was renamed or moved to another machine is the old path (maybe not writable there), and in
        a store shared by several folders is the first folder's."""
        store = self.local_store()
        wanted = f"{artefact_root(folder)}/{self.run_id}/artifacts"
        if store is None or self.client.get_run(self.run_id).info.artifact_uri == wanted:
            return
        # MLflow has no call that moves a run's artefact location; the column is its schema's own.
        with contextlib.closing(sqlite3.connect(store, timeout=60)) as db, db:
            db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (wanted, self.run_id))
        forget_artefact_repository(self.run_id)

    def continue_run(self, run_id: str) -> str | None:
        """The run a resumed training logs into (None when the store no longer holds it)."""
        try:
            self.client.get_run(run_id)
        except Exception:
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        stamp = now_ms()
        batch = [self.Metric(k, v, stamp, epoch) for k, v in metrics.items()]
        for i in range(0, len(batch), 900):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=batch[i : i + 900])

    def events(self, epoch: int, events: list[dict], everything: list[dict]) -> None:
        stamp = now_ms()
        self.client.log_batch(
            self.run_id, metrics=[self.Metric(f"event/{e['type']}", 1.0, stamp, epoch) for e in events]
        )
        self.client.log_text(self.run_id, "".join(json.dumps(e) + "\n" for e in everything), "events.jsonl")

    def artefacts(self, export_dir: str | None, report: str | None, report_dir: str | None) -> None:
        if export_dir:
            self.client.log_artifacts(self.run_id, export_dir, "export")
        if report:
            self.client.log_artifact(self.run_id, report, "report")
        if report_dir and os.path.isdir(report_dir):
            self.client.log_artifacts(self.run_id, report_dir, "report/report")

    def finish(self, status: str) -> None:
        self.client.set_terminated(
            self.run_id, {"finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED")
        )

    def ids(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.uri}


class WandbTracker:
    """One W&B run (offline unless WANDB_MODE says otherwise) in RUN/wandb; a resumed training
    continues the run of the same id. Charts use the epoch as their x axis. `tags` (a fork's link
    to its parent run) go into a new run's config."""

    name = "wandb"

    def __init__(
        self, folder: str, run_id: str | None, run_name: str, config: dict, tags: dict | None = None
    ):
        try:
            import wandb
        except ImportError:
            raise TrackerUnavailable("wandb is not installed: pip install 'camodet[wandb]'") from None
        os.environ.setdefault("WANDB_MODE", "offline")
        self.wandb = wandb
        os.makedirs(folder, exist_ok=True)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", PROJECT),
                name=run_name,
                id=run_id or uuid.uuid4().hex[:8],
                resume="allow",
                dir=os.path.abspath(folder),
                config={**config, **(tags or {})},
                settings=wandb.Settings(quiet=True, console="off"),
                reinit="create_new",
            )
            self.run.define_metric("*", step_metric="epoch")
        except Exception as e:
            raise TrackerUnavailable(f"wandb: {one_line(e)}") from None
        self.continued = run_id is not None  # the same id: at sync, the same W&B run

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log({**metrics, "epoch": epoch})

    def events(self, epoch: int, events: list[dict], everything: list[dict]) -> None:
        self.run.log({**{f"event/{e['type']}": 1 for e in events}, "epoch": epoch})

    def artefacts(self, export_dir: str | None, report: str | None, report_dir: str | None) -> None:
        if export_dir:
            model = self.wandb.Artifact(f"{self.run.id}-export", type="model")
            model.add_dir(export_dir)
            self.run.log_artifact(model)
        if report:
            page = self.wandb.Artifact(f"{self.run.id}-report", type="report")
            page.add_file(report)
            if report_dir and os.path.isdir(report_dir):
                page.add_dir(report_dir, name="report")
            self.run.log_artifact(page)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)

    def ids(self) -> dict:
        return {"run_id": self.run.id, "dir": self.run.dir}


def artefact_root(folder: str) -> str:
    """The file URI of the folder's MLflow artefacts, as the folder is now."""
    return pathlib.Path(os.path.abspath(os.path.join(folder, MLFLOW_ARTIFACTS))).as_uri()


def forget_artefact_repository(run_id: str) -> None:
    """Drop MLflow's in-process cache of the run's artefact repository (keyed by run id), which
    would still write to the run's earlier location."""
    try:
        from mlflow.tracking._tracking_service import utils
    except ImportError:
        return
    getattr(utils, "_artifact_repos_cache", {}).pop(run_id, None)


def flat_config(config: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 1}} -> {'optim.lr': 1}: MLflow's params are flat."""
    out = {}
    for k, v in config.items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def now_ms() -> int:
    import time

    return int(time.time() * 1000)
