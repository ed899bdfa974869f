"""Signals as schedulers and service managers send them: to every process of the job (the
whole process group), data-loader workers included. The trainer still stops gracefully,
saves its position inside the epoch, and the resumed run ends where an uninterrupted one does."""

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from camodet.engine.interrupt import StopRequest, ignore_in_worker
from camodet.runs import history
from camodet.runs.checkpoint import load_checkpoint

from ..conftest import tiny_flags

# The signal comes from outside the trainer (`kill`, as slurmstepd or systemd send it) to its
# whole process group, while the trainer is at the given (epoch, optimizer step).
GROUP_SIGNAL = """
import os, subprocess, sys
import camodet.engine.trainer as t
from camodet.cli import main
real = t.set_lrs
def set_lrs(optimizer, plan, epoch, step, *a):
    if (epoch, step) == (int(os.environ["AT_EPOCH"]), 1) and os.environ.get("GROUP_SIGNAL"):
        group = os.getpgid(os.getppid() if os.environ.get("SIGNAL_PARENT_GROUP") else 0)
        for name in os.environ["GROUP_SIGNAL"].split(","):
            kill = ["kill", "-" + name, "--", f"-{group}"]
            subprocess.run(kill, check=True, start_new_session=True)  # the sender is not in the group
    return real(optimizer, plan, epoch, step, *a)
t.set_lrs = set_lrs
sys.exit(main(sys.argv[1:]))
"""


def group_signal_script(tmp_path) -> str:
    script = tmp_path / "group_signal.py"
    script.write_text(textwrap.dedent(GROUP_SIGNAL))
    return str(script)


def run_in_own_group(cmd, env, tmp_path):
    """The command in a session of its own, so that a signal to its group spares pytest."""
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
    )
    return proc.returncode, proc.stdout + proc.stderr


def same_weights(a, b) -> bool:
    a, b = load_checkpoint(a)["model_state_dict"], load_checkpoint(b)["model_state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def with_workers(tiny_args, run_dir, *extra):
    one_epoch = ["--epochs", "1", "--num-workers", "1", "--checkpoint-dir", str(run_dir)]
    return ["train", *tiny_args, *one_epoch, *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "AT_EPOCH": "1"}


@pytest.fixture(scope="module")
def uninterrupted(synth_root, tmp_path_factory):
    """last.pth of the run that every signal case cuts, run once without a signal: what each
    resumed run must equal (--stall-timeout, which one case sets, changes no computation)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    args = with_workers(tiny_flags(synth_root, tmp / "run"), tmp / "full")
    rc, out = run_in_own_group([sys.executable, group_signal_script(tmp), *args], ENV, tmp)
    assert rc == 0, out[-3000:]
    return tmp / "full" / "last.pth"


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent, code, extra",
    [
        ("TERM", 128 + signal.SIGTERM, []),
        # Twice, as under `srun torchrun`: SLURM signals every process, the agent passes it on.
        ("USR1,USR1", 75, ["--stall-timeout", "0"]),  # no stall watchdog: nothing handles USR1 in workers
    ],
)
def test_a_signal_to_the_whole_process_group_stops_gracefully_and_resumes_exactly(
    uninterrupted, tiny_args, tmp_path, sent, code, extra
):
    sig = sent.split(",")[0]
    script = group_signal_script(tmp_path)
    cut = tmp_path / "cut"
    args = with_workers(tiny_args, cut, *extra)
    rc, out = run_in_own_group([sys.executable, script, *args], {**ENV, "GROUP_SIGNAL": sent}, tmp_path)
    assert rc == code, out[-3000:]
    assert "killed by signal" not in out
    stops = [r for r in history.read(cut / "metrics.jsonl") if r["type"] == "interrupted"]
    assert [(s["signal"], s["epoch"]) for s in stops] == [(f"SIG{sig}", 1)], out[-3000:]
    assert load_checkpoint(cut / "last.pth")["position"]["epoch"] == 1

    resumed = [*args, "--resume-from", str(cut / "last.pth")]
    rc, out = run_in_own_group([sys.executable, script, *resumed], ENV, tmp_path)
    assert rc == 0, out[-3000:]
    assert "exactly inside epoch 1" in out
    assert same_weights(uninterrupted, cut / "last.pth")


def test_a_repeated_stop_signal_is_one_stop_and_a_second_ctrl_c_aborts():
    with StopRequest(extra_signals=(signal.SIGUSR1,)) as stop:
        for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR1):  # preemption, then the time limit
            os.kill(os.getpid(), s)
        assert stop.name == "SIGUSR1"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def wait_in_worker(ready, finished):
    ignore_in_worker((signal.SIGINT, signal.SIGTERM, signal.SIGUSR1), finished)
    ready.set()
    time.sleep(60)


def test_a_loader_worker_leaves_stop_signals_to_the_trainer_until_it_has_finished():
    ctx = multiprocessing.get_context("fork")
    ready, finished = ctx.Event(), multiprocessing.RawValue("b", 0)
    worker = ctx.Process(target=wait_in_worker, args=(ready, finished), daemon=True)
    worker.start()
    assert ready.wait(30)
    for name in ("INT", "TERM", "USR1"):  # to the job's processes: a scheduler, a terminal, `kill`
        subprocess.run(["kill", f"-{name}", str(worker.pid)], check=True)
    worker.join(1)
    assert worker.is_alive()
    finished.value = 1  # the trainer is done (saved, or crashed): SIGTERM ends a worker again
    worker.terminate()  # as the loader and multiprocessing's exit end a worker that did not quit
    worker.join(10)
    assert worker.exitcode == 0
