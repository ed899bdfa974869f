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
