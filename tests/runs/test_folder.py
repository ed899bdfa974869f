import os

import pytest

from camodet.cli import main
from camodet.runs.checkpoint import CheckpointError
from camodet.runs.folder import RunFolder


def claim(run_dir, resume_from, overwrite, remove=True):
    RunFolder(run_dir).claim(resume_from, overwrite, remove)


def _fake_run(folder):
    folder.mkdir()
    for name in ("last.pth", "best_model.pth", "epoch_3.pth", "metrics.jsonl", "config.yaml", "report.html"):
        (folder / name).write_text(name)
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events").write_text("x")
    (folder / "notes.txt").write_text("mine")  # not the run's: --overwrite must keep it
    (folder / "data").mkdir()


def test_new_or_continued_runs_may_use_the_folder(tmp_path):
    claim(str(tmp_path / "absent"), None, False)
    run = tmp_path / "run"
    _fake_run(run)
    claim(str(run), str(run / "last.pth"), False)  # exact resume in place
    claim(str(run / "."), os.path.relpath(run / "best_model.pth"), False)  # same folder, other spelling
    assert (run / "last.pth").read_text() == "last.pth"


def test_another_run_is_refused_and_nothing_is_touched(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    _fake_run(run)
    other.mkdir()
    (other / "best_model.pth").write_text("x")
    for resume in (None, str(other / "best_model.pth")):  # fresh run, or warm restart from elsewhere
        with pytest.raises(
            CheckpointError, match=f"already holds a run .*--resume-from {run}/last.pth.*--overwrite"
        ):
            claim(str(run), resume, False)
    assert sorted(os.listdir(run)) == [
        "best_model.pth",
        "config.yaml",
        "data",
        "epoch_3.pth",
        "last.pth",
        "metrics.jsonl",
        "notes.txt",
        "report.html",
        "tensorboard",
    ]


def test_overwrite_removes_only_the_runs_files(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    claim(str(run), None, True, remove=False)  # a DDP rank other than 0 leaves the folder alone
    assert (run / "last.pth").exists()
    claim(str(run), None, True)
    assert sorted(os.listdir(run)) == ["data", "notes.txt"]


def test_train_twice_into_one_folder(tiny_args, tmp_path, capsys):
    args = [a for a in tiny_args] + ["--epochs", "1"]
    assert main(["train"] + args) == 0
    run = tmp_path / "run"
    before = {
        f: (run / f).read_bytes() for f in ("last.pth", "best_model.pth", "metrics.jsonl", "config.yaml")
    }
    capsys.readouterr()
    assert main(["train"] + args + ["--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"camodet: error: {run} already holds a run") and "\n" not in err
    assert {f: (run / f).read_bytes() for f in before} == before
    assert main(["train"] + args + ["--lr", "0.01", "--overwrite"]) == 0
    assert (run / "metrics.jsonl").read_bytes() != before["metrics.jsonl"]
    assert sum(1 for line in open(run / "metrics.jsonl") if '"type": "epoch"' in line) == 1
    # --overwrite is not a hyperparameter: resuming without it is exact, not a warm restart
    capsys.readouterr()
    assert main(["train"] + args + ["--lr", "0.01", "--resume-from", str(run / "last.pth")]) == 0
    captured = capsys.readouterr()
    assert "nothing to train" in captured.out + captured.err
    assert not [line for line in open(run / "metrics.jsonl") if '"warm_restart"' in line]


def test_keep_last_after_resuming_in_place_from_an_earlier_epoch_keeps_what_it_writes(tmp_path):
    folder = RunFolder(str(tmp_path))

    def write(path):
        open(path, "w").close()

    for epoch in range(1, 11):  # the first branch: epochs 1..10, keeping 3 (epoch_10 after epoch_9)
        folder.keep_last(epoch, 3, write)
    assert sorted(os.listdir(tmp_path)) == ["epoch_10.pth", "epoch_8.pth", "epoch_9.pth"]
    folder.keep_last(6, 3, write)  # resumed in place from epoch 5: the branch after it is left
    assert "epoch_6.pth" in os.listdir(tmp_path)
    folder.keep_last(7, 3, write)
    folder.keep_last(8, 3, write)
    assert sorted(os.listdir(tmp_path)) == ["epoch_6.pth", "epoch_7.pth", "epoch_8.pth"]


@pytest.mark.parametrize("flag", ["--init-from", "--pretrained-path"])
def test_overwrite_refuses_to_remove_a_file_the_run_reads(tiny_args, tmp_path, capsys, flag):
    run = tmp_path / "run"  # tiny_args' --checkpoint-dir
    _fake_run(run)
    before = sorted(os.listdir(run))
    source = os.path.relpath(run / "best_model.pth")  # another spelling of the same file
    assert main(["train", *tiny_args, "--overwrite", flag, source]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{flag} {source} is a file of the run in {run}" in err and "\n" not in err
    assert sorted(os.listdir(run)) == before and (run / "tensorboard" / "events").exists()


def test_overwrite_with_a_resume_in_the_folder_continues_that_run_and_removes_nothing(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    before = sorted(os.listdir(run))
    RunFolder(str(run)).claim(str(run / "epoch_3.pth"), True, reads={"--init-from": None})
    assert sorted(os.listdir(run)) == before
