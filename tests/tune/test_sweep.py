"""camodet sweep with real Optuna storages and real (tiny) training runs: bad input refused before
anything trains, two workers sharing a study, a worker stopped mid-trial and started again, pruning
of a lagging trial, the summary, and a real PostgreSQL server where one can be started."""

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

optuna = pytest.importorskip("optuna", reason="camodet sweep needs Optuna: pip install 'camodet[tune]'")

from camodet.cli import main  # noqa: E402
from camodet.tune.study import default_storage  # noqa: E402

SPACE = {"optim.lr": {"low": 3e-4, "high": 3e-3, "log": True}}


def sweep_args(synth_root, out, space_file, epochs=1, stage1=1) -> list[str]:
    return [
        "sweep", "--dataset-path", synth_root, "--backbone", "edgenext_xx_small", "--num-experts", "1",
        "--decoder-channels", "16", "--img-size", "64", "--batch-size", "4", "--num-workers", "0",
        "--epochs", str(epochs), "--stage1-epochs", str(stage1), "--no-tensorboard", "--image-every", "0",
        "--space", str(space_file), "--out", str(out),
    ]  # fmt: skip


def write_space(path, space=SPACE):
    path.write_text(json.dumps(space))  # JSON is YAML
    return path


def trials_of(out, name="camodet", storage=None):
    study = optuna.load_study(study_name=name, storage=storage or default_storage(str(out)))
    return study.get_trials(deepcopy=False)


def epochs_in(run_dir) -> list[int]:
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [r["epoch"] for r in records if r["type"] == "epoch"]


def worker(args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-m", "camodet", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


def wait_for_first_epoch(proc: subprocess.Popen, out, trial: int) -> None:
    """Until the worker `proc` has recorded trial `trial`'s first epoch (its last.pth is written)."""
    metrics = out / "trials" / f"trial_{trial:04d}" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and '"type": "epoch"' in metrics.read_text()) and proc.poll() is None:
        assert time.monotonic() < deadline, f"trial {trial} never finished its first epoch"
        time.sleep(0.1)


def test_bad_input_is_refused_before_anything_trains(synth_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    space = write_space(tmp_path / "space.yaml")
    base = sweep_args(synth_root, out, space)
    bad = write_space(tmp_path / "bad.yaml", {"optim.lr": {"low": 3e-4, "high": 3e-3}, "optim.lrr": [1, 2]})
    assert main([*base, "--space", str(bad)]) == 2
    unreachable = "postgresql+psycopg2://nobody:secret@127.0.0.1:9/none"
    assert main([*base, "--storage", unreachable]) == 2
    assert not out.exists()  # nothing written for either
    # a study of another space under the same name: refused, and the study is left as it was
    from camodet.tune.space import SearchSpace
    from camodet.tune.study import SPACE_ATTR, open_study

    os.makedirs(out)
    url = default_storage(str(out))
    other = SearchSpace(
        {"optim.weight_decay": [0.01, 0.05]}, __import__("camodet.config").config.TrainConfig()
    )
    study = open_study(url, "camodet", other, None, None, ["--lr", "1"], heartbeat=60)
    study.enqueue_trial({"optim.weight_decay": 0.05})
    assert main(base) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("camodet: error: ") for e in errors)
    assert "'optim.lrr' is not a setting" in errors[0]
    assert "cannot open it" in errors[1] and "secret" not in errors[1]
    assert "searches another space (differs in optim.lr, optim.weight_decay)" in errors[2]
    after = optuna.load_study(study_name="camodet", storage=url)
    assert after.user_attrs[SPACE_ATTR] == other.fingerprint and len(after.trials) == 1
    assert not (out / "trials").exists()


@pytest.mark.slow
def test_two_sqlite_workers_run_every_trial_exactly_once(synth_root, tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(synth_root, out, write_space(tmp_path / "space.yaml"))
    os.makedirs(out)  # both workers create the study in it at once
    procs = [worker([*args, "--trials", "2"]) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = trials_of(out)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == 4 and sorted(os.listdir(out / "trials")) == sorted(
        map(os.path.basename, run_dirs)
    )
    assert all(epochs_in(d) == [1] for d in run_dirs)  # each trained once, by one worker


@pytest.mark.slow
def test_a_sweep_stopped_mid_trial_resumes_it_and_runs_nothing_twice(synth_root, tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(synth_root, out, write_space(tmp_path / "space.yaml"), epochs=2, stage1=1)
    first = worker([*args, "--trials", "1"])
    wait_for_first_epoch(first, out, 0)
    first.send_signal(signal.SIGTERM)  # as a scheduler ends a job: inside trial 0, after epoch 1
    log = first.communicate(timeout=300)[0].decode()
    assert first.returncode == 128 + signal.SIGTERM, log
    assert "trial 0 is queued again and resumes from its last.pth" in log
    again = worker([*args, "--trials", "1"])  # the queued retry comes first
    log = again.communicate(timeout=600)[0].decode()
    assert again.returncode == 0, log
    states = {t.number: (t.state.name, os.path.basename(t.user_attrs["run_dir"])) for t in trials_of(out)}
    assert states == {
        0: ("FAIL", "trial_0000"),  # the interrupted attempt
        1: ("COMPLETE", "trial_0000"),  # its retry, resumed in the same folder
    }
    assert epochs_in(out / "trials" / "trial_0000") == [1, 2]  # epoch 1 was not trained again
    assert os.listdir(out / "trials") == ["trial_0000"]


@pytest.mark.slow
def test_pruning_stops_a_lagging_two_process_trial_and_the_summary_shows_it(synth_root, tmp_path, capsys):
    """Under torchrun one sweep worker is two processes: each trial trains on both (DDP), rank 0
    asks Optuna, and the pruner's verdict stops both ranks at the same epoch."""
    out = tmp_path / "sweep"
    space = write_space(tmp_path / "space.yaml", {"optim.lr": [0.01, 1e-9]})
    args = sweep_args(synth_root, out, space, epochs=2, stage1=2)
    args += ["--min-lr", "0", "--pruner", "median", "--prune-startup", "1", "--prune-warmup", "1"]
    os.makedirs(out)
    from camodet.config import TrainConfig
    from camodet.tune.space import SearchSpace
    from camodet.tune.study import open_study

    # the order is fixed: a trial that learns, then one whose LR is a billionth (it cannot)
    base = TrainConfig()
    base.optim.min_lr = 0.0
    searched = SearchSpace(json.loads(space.read_text()), base)
    study = open_study(default_storage(str(out)), "camodet", searched, None, None, [], heartbeat=60)
    study.enqueue_trial({"optim.lr": 0.01})
    study.enqueue_trial({"optim.lr": 1e-9})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    torchrun += [f"--master-port={free_port()}", "-m", "camodet"]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*torchrun, *args, "--trials", "2"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("accumulation 1 x 2 process(es) = effective batch 8") == 2  # each trial
    good, bad = trials_of(out)
    assert good.state.name == "COMPLETE" and good.user_attrs["epochs"] == 2
    assert bad.state.name == "PRUNED" and bad.user_attrs["epochs"] == 1  # stopped after its first epoch
    assert bad.intermediate_values[1] < good.intermediate_values[1]
    run = out / "trials" / "trial_0001"
    assert epochs_in(run) == [1] and os.path.isfile(run / "last.pth")  # a complete, consistent folder
    capsys.readouterr()
    assert main(["sweep", "--summary", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "    1  pruned " in printed and "    0  complete " in printed
    assert "--lr 0.01 --checkpoint-dir runs/camodet-best" in printed
    page = (out / "summary.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # history and per-epoch IoU at least


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (Debian's package, run as the `postgres` user under root) on
    a free port; skipped with the reason where none can be started."""
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if not found:
        pytest.skip("no PostgreSQL server (initdb): 'make test' installs Debian's postgresql as root")
    bindir = os.path.dirname(os.path.realpath(found))
    data = tempfile.mkdtemp(prefix="camodet-pg-")
    run_as = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL refuses to run as root and there is no 'postgres' user")
        os.chown(data, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    pg_ctl = [*run_as, os.path.join(bindir, "pg_ctl"), "-D", os.path.join(data, "db")]
    try:
        init = subprocess.run(
            [
                *run_as,
                os.path.join(bindir, "initdb"),
                "-D",
                os.path.join(data, "db"),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip().splitlines()[-1:]}")
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
        start = subprocess.run(
            [*pg_ctl, "-l", os.path.join(data, "log"), "-w", "-o", options, "start"], capture_output=True
        )
        if start.returncode != 0:
            pytest.skip(
                f"the PostgreSQL server did not start: {open(os.path.join(data, 'log')).read()[-200:]}"
            )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_a_postgresql_server(postgres_url, synth_root, tmp_path):
    out = tmp_path / "sweep"
    args = sweep_args(synth_root, out, write_space(tmp_path / "space.yaml"))
    args += ["--storage", postgres_url, "--study", "shared", "--trials", "1"]
    procs = [worker(args) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = trials_of(out, "shared", postgres_url)
    assert sorted((t.number, t.state.name) for t in trials) == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert len({t.user_attrs["run_dir"] for t in trials}) == 2


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_prune_warmup_lets_every_trial_train_that_many_epochs(pruner):
    """--prune-warmup 2: no trial is judged before it has completed 2 epochs (Optuna's steps are
    camodet's epochs, numbered from 1), whichever pruner judges it."""
    from camodet.options import SweepSettings
    from camodet.tune.sweep import make_pruner

    opts = SweepSettings(
        out="out", storage="sqlite://", study="s", trials=1, pruner=pruner, prune_startup=0, prune_warmup=2
    )
    study = optuna.create_study(
        direction="maximize", pruner=make_pruner(opts, epochs=6), sampler=optuna.samplers.RandomSampler(0)
    )
    for _ in range(4):  # trials that learn, at every epoch
        good = study.ask()
        for epoch in range(1, 7):
            good.report(0.9, epoch)
        study.tell(good, 0.9)
    lagging = study.ask()
    lagging.report(0.0, 1)
    assert not lagging.should_prune()  # after epoch 1 of a warmup of 2
    if pruner == "median":  # the median pruner judges every epoch from the warmup's end on
        lagging.report(0.0, 2)
        assert lagging.should_prune()


def test_a_worker_with_other_train_flags_is_refused_by_the_study(synth_root, tmp_path, capsys, monkeypatch):
    """The study records the train flags it was started with (those that change what a trial
    computes): a worker with others is refused before it joins; one that differs only in flags that
    change nothing (--num-workers, logging) joins. (The trials' training is left out here.)"""
    monkeypatch.setattr("camodet.tune.sweep.TrialRunner.__call__", lambda self, trial: 0.5)
    out = tmp_path / "sweep"
    args = [*sweep_args(synth_root, out, write_space(tmp_path / "space.yaml")), "--trials", "1"]
    assert main(args) == 0
    capsys.readouterr()
    bigger = [*args[: args.index("--img-size") + 1], "96", *args[args.index("--img-size") + 2 :]]
    assert main([*bigger, "--seed", "7"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("camodet: error: --study camodet in ") and "other train flags" in error
    assert "--img-size (96 here, 64 in the study)" in error and "(also --seed);" in error
    assert "a new --study name" in error
    assert len(trials_of(out)) == 1  # nothing joined
    assert main([*args, "--num-workers", "1", "--tensorboard", "--image-every", "2"]) == 0
    assert len(trials_of(out)) == 2


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_that_trial_resumed_by_the_next_sweep_and_nothing_rerun(
    synth_root, tmp_path
):
    """kill -9 (a lost node, the OOM killer) inside a trial, after a finished one: the worker's
    heartbeat stops, and the same sweep command run again fails the silent trial and queues it
    with its settings and folder, resumes it from its last.pth, and trains nothing twice."""
    out = tmp_path / "sweep"
    args = sweep_args(synth_root, out, write_space(tmp_path / "space.yaml"), epochs=2, stage1=1)
    args += ["--heartbeat", "1"]  # silent for 2 s: stale
    first = worker([*args, "--trials", "2"])
    wait_for_first_epoch(first, out, 1)
    first.kill()  # SIGKILL: no handler runs, nothing is queued by the worker itself
    log = first.communicate(timeout=60)[0].decode()
    assert first.returncode == -signal.SIGKILL, log
    finished = out / "trials" / "trial_0000"
    before = {f: os.stat(finished / f).st_mtime_ns for f in os.listdir(finished)}
    assert [t.state.name for t in trials_of(out)] == ["COMPLETE", "RUNNING"]  # until someone notices

    again = worker([*args, "--trials", "1"])
    log = again.communicate(timeout=600)[0].decode()
    assert again.returncode == 0, log
    states = {t.number: (t.state.name, os.path.basename(t.user_attrs["run_dir"])) for t in trials_of(out)}
    assert states == {
        0: ("COMPLETE", "trial_0000"),  # finished before the kill: not run again
        1: ("FAIL", "trial_0001"),  # the killed attempt, failed by the next worker
        2: ("COMPLETE", "trial_0001"),  # its retry, resumed in the same folder
    }
    assert "trial 2: resuming" in log and "(1 epoch(s) trained by an earlier attempt)" in log
    assert epochs_in(out / "trials" / "trial_0001") == [1, 2]  # epoch 1 was not trained again
    assert {f: os.stat(finished / f).st_mtime_ns for f in os.listdir(finished)} == before
    assert sorted(os.listdir(out / "trials")) == ["trial_0000", "trial_0001"]


@pytest.mark.slow
def test_a_trial_that_raises_mid_training_ends_the_worker_in_one_line_and_the_next_sweep_resumes_it(
    synth_root, tmp_path
):
    """The training images become unreadable inside a trial, after its first epoch (a network
    share gone): the worker ends with the error in one line, no traceback, and queues the trial
    again; once the files are back, the same sweep command resumes it from its last.pth."""
    data = tmp_path / "COD10K-v3"
    shutil.copytree(synth_root, data)
    out = tmp_path / "sweep"
    args = sweep_args(str(data), out, write_space(tmp_path / "space.yaml"), epochs=2, stage1=1)
    first = worker([*args, "--trials", "1"])
    wait_for_first_epoch(first, out, 0)
    images = sorted(glob.glob(str(data / "Train" / "Image" / "*")))
    kept = {path: open(path, "rb").read() for path in images}
    for path in images:
        open(path, "wb").write(b"not an image")
    log = first.communicate(timeout=300)[0].decode()
    assert first.returncode == 2, log
    assert "Traceback" not in log, log
    (error,) = [line for line in log.splitlines() if "unreadable image" in line]  # said once
    assert error.startswith("camodet: error: ") and "Train/Image/" in error
    assert "trial 0 failed and is queued again: the same sweep command resumes it from its last.pth" in log
    for path, content in kept.items():
        open(path, "wb").write(content)

    again = worker([*args, "--trials", "1"])
    log = again.communicate(timeout=600)[0].decode()
    assert again.returncode == 0, log
    states = {t.number: (t.state.name, os.path.basename(t.user_attrs["run_dir"])) for t in trials_of(out)}
    assert states == {0: ("FAIL", "trial_0000"), 1: ("COMPLETE", "trial_0000")}
    assert "trial 1: resuming" in log and epochs_in(out / "trials" / "trial_0000") == [1, 2]
