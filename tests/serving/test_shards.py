"""predict and evaluate over several processes (torchrun, evaluate --workers): the same files and
the same table as one process; clips whole; --skip-existing after a killed run."""

import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from camodet.cli import main
from camodet.evaluation.metrics import Evaluator, score_image
from camodet.launch import Shard

from ..conftest import PYTHON, files_under


def torchrun(port: int, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m camodet ARGS` on the CPU (gloo)."""
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={port}",
        "-m",
        "camodet",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_shares_cover_every_input_once_in_batch_blocks():
    shares = [Shard(r, 3).indices(17, block=4) for r in range(3)]
    assert shares[0] == [0, 1, 2, 3, 12, 13, 14, 15] and shares[2] == [8, 9, 10, 11]
    assert sorted(i for s in shares for i in s) == list(range(17))


def test_states_added_in_order_give_the_single_evaluators_numbers():
    rng = np.random.default_rng(0)
    images = [
        (
            rng.integers(0, 256, (20 + i, 30), dtype=np.uint8),
            rng.integers(0, 256, (20 + i, 30), dtype=np.uint8),
        )
        for i in range(7)
    ]
    alone = Evaluator()
    for pred, gt in images:
        alone.step(pred, gt)
    states = {i: score_image(pred, gt) for i, (pred, gt) in reversed(list(enumerate(images)))}  # any order
    merged = Evaluator()
    for i in sorted(states):
        merged.extend(states[i])
    assert merged.results() == alone.results()
    assert all(np.array_equal(merged.curves()[k], alone.curves()[k]) for k in alone.curves())


@pytest.mark.slow
def test_two_processes_write_the_single_process_files_and_keep_clips_whole(
    tiny_checkpoint, synth_root, tmp_path
):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for clip, count in (("bear", 5), ("cat", 4), ("dog", 3)):
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
                frames / f"{clip}_{i:03d}.png"
            )
    images = os.path.join(synth_root, "Test", "Image", "*.jpg")
    common = [str(frames), images, "--frames", "--save-frames", "--batch-size", "2", "--num-workers", "0"]
    assert main(["predict", str(tiny_checkpoint), *common, "--out", str(tmp_path / "one")]) == 0
    run = torchrun(29571, "predict", str(tiny_checkpoint), *common, "--out", str(tmp_path / "two"))
    one, two = files_under(tmp_path / "one"), files_under(tmp_path / "two")
    assert sorted(one) == sorted(two) and not any(".partial" in f for f in two)
    pngs = [f for f in one if f.endswith(".png")]
    assert len(pngs) == 3 * 6 + 2 * 12 and all(one[f] == two[f] for f in pngs)  # masks, maps: same bytes
    clips = re.findall(r"-> .*/(\w+)/mask\.mp4.* \[process (\d)\]", run.stdout)
    assert sorted(c for c, _ in clips) == ["bear", "cat", "dog"]  # each clip once: by one process
    assert {p for _, p in clips} == {"0", "1"}
    assert "of 6 images" in run.stdout


@pytest.mark.slow
def test_two_processes_and_two_metric_workers_print_the_single_process_table(
    tiny_checkpoint, synth_root, capsys
):
    args = [
        "evaluate",
        str(tiny_checkpoint),
        "--dataset-path",
        synth_root,
        "--batch-size",
        "2",
        "--num-workers",
        "0",
    ]
    assert main(args) == 0
    alone = capsys.readouterr().out
    assert "| COD10K | " in alone
    assert torchrun(29573, *args).stdout == alone
    assert main([*args, "--workers", "2"]) == 0
    assert capsys.readouterr().out == alone


@pytest.mark.slow
def test_skip_existing_after_a_killed_run_does_only_the_rest(tiny_checkpoint, synth_root, tmp_path, capsys):
    images, out = os.path.join(synth_root, "Train", "Image"), tmp_path / "out"
    cmd = [PYTHON, "-m", "camodet", "predict", str(tiny_checkpoint), images, "--out", str(out)]
    killed = subprocess.Popen([*cmd, "--batch-size", "1", "--num-workers", "0"], stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while (
        killed.poll() is None and len(os.listdir(out / "cutouts") if (out / "cutouts").is_dir() else []) < 3
    ):
        assert time.time() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    kept = {
        f: os.stat(out / "masks" / f).st_mtime_ns for f in os.listdir(out / "masks") if not f.startswith(".")
    }
    assert 3 <= len(kept) < 24
    for f in os.listdir(out / "masks"):
        if not f.startswith("."):
            Image.open(out / "masks" / f).load()  # whole files only under the real names
    # An image counts as done only with all four outputs, so a kill between its mask and its cutout leaves it
    # to the rerun; which images are done must be read before the rerun fills the gaps.
    complete = [
        f
        for f in kept
        if all(
            (out / d / f.replace(".png", e)).exists()
            for d, e in (("probs", ".png"), ("overlays", ".jpg"), ("cutouts", ".png"))
        )
    ]
    assert main(["predict", str(tiny_checkpoint), images, "--out", str(out), "--skip-existing"]) == 0
    assert (
        f"wrote masks, probs, overlays and cutouts of {24 - len(complete)} of 24" in capsys.readouterr().out
    )
    assert all(os.stat(out / "masks" / f).st_mtime_ns == kept[f] for f in complete)
    assert len([f for f in os.listdir(out / "masks") if not f.startswith(".")]) == 24


# predict with write_outputs replaced: at its 2nd image, the process FAULT_RANK kills itself (the
# out-of-memory killer's SIGKILL) while the other one is in the middle of a long share.
RANK_FAULT = """
import os, signal, sys, time
import camodet.serving.predict as predict
from camodet.cli import main

real, calls = predict.write_outputs, [0]

def write_outputs(*args):
    calls[0] += 1
    if calls[0] == 2 and os.environ["RANK"] == os.environ["FAULT_RANK"]:
        os.kill(os.getpid(), signal.SIGKILL)
    if calls[0] == 2:
        time.sleep(600)  # a share that would take ten minutes more
    return real(*args)

predict.write_outputs = write_outputs
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_process_killed_mid_run_ends_the_others_at_once_and_skip_existing_does_the_rest(
    tiny_checkpoint, synth_root, tmp_path, capsys
):
    """Two processes started as srun starts them, without torchrun's agent to end the others."""
    script = tmp_path / "rank_fault.py"
    script.write_text(RANK_FAULT)
    images, out = os.path.join(synth_root, "Train", "Image"), tmp_path / "out"
    cmd = [PYTHON, str(script), "predict", str(tiny_checkpoint), images, "--out", str(out)]
    cmd += ["--batch-size", "1", "--num-workers", "0"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FAULT_RANK": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update(MASTER_PORT="29575", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    ranks = [
        subprocess.Popen(
            cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True
        )
        for r in range(2)
    ]
    try:  # without the watch, process 0 went on with its share (and then waited in a collective)
        errs = [p.communicate(timeout=120)[1] for p in ranks]
    finally:
        for p in ranks:
            p.kill()  # a no-op for a process that has ended
    assert [p.returncode for p in ranks] == [2, -signal.SIGKILL], errs
    assert errs[0].strip().splitlines() == [
        "camodet: error: process 1 of 2 of this launch stopped before the end (it failed, as its own "
        "message says, or was killed); ending this one too. The outputs written so far stay: "
        "--skip-existing does only the rest."
    ]
    complete = {
        f: os.stat(out / "masks" / f).st_mtime_ns
        for f in os.listdir(out / "masks")
        if not f.startswith(".") and (out / "cutouts" / f).exists()
    }
    assert len(complete) == 2  # each process's first image
    for f in complete:
        Image.open(out / "masks" / f).load()
    assert main(["predict", str(tiny_checkpoint), images, "--out", str(out), "--skip-existing"]) == 0
    assert "wrote masks, probs, overlays and cutouts of 22 of 24" in capsys.readouterr().out
    assert all(os.stat(out / "masks" / f).st_mtime_ns == mtime for f, mtime in complete.items())
