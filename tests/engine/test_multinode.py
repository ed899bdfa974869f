"""Beyond one machine: torchrun across (simulated) nodes, srun without torchrun, a
preemption signal that saves once and requeues, --resume-from auto, caches per node."""

import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from camodet.engine.distributed import first_host, from_srun, tasks_per_node
from camodet.runs import history
from camodet.runs.checkpoint import load_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny(synth_root, run_dir, *extra):
    return [
        "train",
        "--dataset-path",
        synth_root,
        "--checkpoint-dir",
        str(run_dir),
        "--backbone",
        "edgenext_xx_small",
        "--num-experts",
        "2",
        "--img-size",
        "64",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--decoder-channels",
        "16",
        "--epochs",
        "3",
        "--stage1-epochs",
        "1",
        "--progressive-unfreeze",
        *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def same_weights(a, b) -> bool:
    a, b = load_checkpoint(a)["model_state_dict"], load_checkpoint(b)["model_state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_slurm_variables_become_torchrun_variables():
    assert first_host("gpu[07-09,12],cpu3") == "gpu07" and first_host("node5,node6") == "node5"
    assert tasks_per_node("4(x2)") == 4 and tasks_per_node("2,1") == 2
    env = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "a100-[003-004]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }
    assert from_srun(env) == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "a100-003",
        "MASTER_PORT": str(20000 + 4242),
    }
    assert from_srun({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task: no group
    assert from_srun({}) is None


@pytest.mark.slow
def test_two_torchrun_nodes_equal_one_launcher_and_build_a_cache_each(synth_root, tmp_path):
    """Two launchers with --nnodes 2 (c10d rendezvous, gloo), each node with its own local
    scratch for --cache; then one launcher with two processes and one shared cache folder."""
    port = free_port()
    nodes = []
    for node in range(2):
        scratch = tmp_path / f"node{node}-tmp"
        scratch.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "camodet-test",
            "--max-restarts",
            "0",
            "-m",
            "camodet",
            *tiny(synth_root, tmp_path / "two-nodes", "--cache", "--cache-dir", "$TMPDIR/cache"),
        ]
        nodes.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path,
                env={**ENV, "TMPDIR": str(scratch)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    both = "".join(outs)
    assert "launcher torchrun: 2 process(es) on 2 node(s), 1 per node" in both
    assert "epoch 3: backbone groups [1, 2, 3] now train" in both and "hold identical parameters" in both
    for node in range(len(outs)):  # node-local scratch: each node builds once
        assert os.listdir(tmp_path / f"node{node}-tmp" / "cache"), node
    assert both.count("cache: writing") == 2

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "camodet",
        *tiny(synth_root, tmp_path / "one-node", "--cache", "--cache-dir", str(tmp_path / "shared-cache")),
    ]
    one = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "launcher torchrun: 2 process(es) on 1 node(s), 2 per node" in one.stdout
    assert one.stdout.count("cache: writing") == 1  # shared folder: built once overall
    assert same_weights(tmp_path / "two-nodes" / "last.pth", tmp_path / "one-node" / "last.pth")


PREEMPT = """
import os, subprocess, sys
import camodet.engine.trainer as t
from camodet.cli import main
real = t.set_lrs
def set_lrs(optimizer, plan, epoch, step, *a):
    if (epoch, step) == (3, 1) and os.environ.get("PREEMPT") and os.environ["SLURM_PROCID"] == "1":
        # as slurmstepd sends the warning: to every process of the step, loader workers included
        kill = ["kill", "-USR1", "--", f"-{os.getpgid(0)}"]
        subprocess.run(kill, check=True, start_new_session=True)
    return real(optimizer, plan, epoch, step, *a)
t.set_lrs = set_lrs
sys.exit(main(sys.argv[1:]))
"""


def srun(tmp_path, args, port, preempt=False, job="77"):
    """Two tasks as srun starts them: SLURM_* variables only, no torchrun; one process group of
    their own, as a job step is."""
    script = tmp_path / "task.py"
    script.write_text(textwrap.dedent(PREEMPT))
    procs = []
    for rank in range(2):
        env = {
            **ENV,
            "SLURM_PROCID": str(rank),
            "SLURM_NTASKS": "2",
            "SLURM_LOCALID": str(rank),
            "SLURM_JOB_ID": job,
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": "2",
            "MASTER_PORT": str(port),
            "PATH": f"{tmp_path}:{os.environ['PATH']}",
            **({"PREEMPT": "1"} if preempt else {}),
        }
        for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
            env.pop(k, None)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                process_group=procs[0].pid if procs else 0,  # a group of their own: pytest is spared
            )
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append((p.returncode, out, err))
    return results


@pytest.mark.slow
def test_srun_launch_preemption_requeue_and_auto_resume(synth_root, tmp_path):
    fake_scontrol = tmp_path / "scontrol"  # records what it was asked
    fake_scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    fake_scontrol.chmod(fake_scontrol.stat().st_mode | stat.S_IEXEC)

    full = srun(tmp_path, tiny(synth_root, tmp_path / "full"), free_port())
    assert [r[0] for r in full] == [0, 0], full[0][2][-2000:]
    assert "launcher srun: 2 process(es) on 1 node(s), 2 per node" in full[0][1]

    # With a loader worker per task: the preemption signal reaches them too.
    args = tiny(synth_root, tmp_path / "job", "--resume-from", "auto", "--requeue-on-preempt")
    args += ["--num-workers", "1"]
    cut = srun(tmp_path, args, free_port(), preempt=True)
    assert [r[0] for r in cut] == [75, 75], cut[0][2][-2000:] + cut[1][2][-2000:]
    assert "--resume-from auto: " in cut[0][1] and "starting a new run" in cut[0][1]
    stops = [r for r in history.read(tmp_path / "job" / "metrics.jsonl") if r["type"] == "interrupted"]
    assert len(stops) == 1 and stops[0]["signal"] == "SIGUSR1" and stops[0]["epoch"] == 3  # saved once
    mid = load_checkpoint(tmp_path / "job" / "last.pth")
    assert mid["position"]["epoch"] == 3 and mid["world_size"] == 2
    assert open(tmp_path / "scontrol.log").read().split() == ["requeue", "77"]  # by rank 0 only

    again = srun(tmp_path, args, free_port())  # the requeued job: the same command
    assert [r[0] for r in again] == [0, 0], again[0][2][-2000:]
    assert "exactly inside epoch 3" in again[0][1]
    assert same_weights(tmp_path / "full" / "last.pth", tmp_path / "job" / "last.pth")
    ea = [r for r in history.read(tmp_path / "full" / "metrics.jsonl") if r["type"] == "epoch"]
    eb = [r for r in history.read(tmp_path / "job" / "metrics.jsonl") if r["type"] == "epoch"]
    assert [(r["epoch"], r["loss"], r["val"]) for r in ea] == [(r["epoch"], r["loss"], r["val"]) for r in eb]
