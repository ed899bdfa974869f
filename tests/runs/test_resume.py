import os

import torch

from camodet.config import TrainConfig
from camodet.runs.checkpoint import atomic_save, load_checkpoint
from camodet.runs.folder import RunFolder
from camodet.runs.resume import Resume, changed_settings, settle_best


def test_setting_added_after_a_checkpoint_is_no_change_at_its_default():
    """A checkpoint written before model.backbone_norm existed resumes exactly at the default
    (what it was trained with); a run that asks for another value is a warm restart."""
    saved = TrainConfig().to_dict()
    del saved["model"]["backbone_norm"]
    assert changed_settings(saved, TrainConfig().to_dict()) == []
    other = TrainConfig()
    other.model.backbone_norm = "frozen"
    assert changed_settings(saved, other.to_dict()) == ["model.backbone_norm: None -> 'frozen'"]


def test_cache_changes_the_inputs_so_it_is_a_hyperparameter_and_workers_are_not():
    saved = TrainConfig().to_dict()
    cached = TrainConfig().to_dict()
    cached["data"]["cache"] = True  # images pre-resized with INTER_AREA: other training inputs
    assert changed_settings(saved, cached) == ["data.cache: False -> True"]
    elsewhere = TrainConfig().to_dict()
    elsewhere["data"]["cache_dir"], elsewhere["data"]["num_workers"] = "/scratch/cache", 4
    elsewhere["run"]["log_every"] = 7
    assert changed_settings(saved, elsewhere) == []


def test_what_amp_resolves_to_on_the_device_decides_not_the_flag():
    from camodet.runs.resume import resume_changes

    cfg = TrainConfig()  # --amp auto
    ckpt = {"config": TrainConfig().to_dict(), "world_size": 1, "autocast": "bf16"}  # auto on an A100
    assert resume_changes(ckpt, cfg, 1, "bf16") == []
    # the same flags on a T4: fp16 with a grad scaler, which no uninterrupted run computed
    assert resume_changes(ckpt, cfg, 1, "fp16") == ["autocast: bf16 -> fp16 (--amp auto on this device)"]
    cfg.optim.amp = "bf16"  # spelled out, resolving as before: still exact
    assert resume_changes(ckpt, cfg, 1, "bf16") == []
    del ckpt["autocast"]  # a checkpoint from before it was recorded: the flag decides
    assert resume_changes(ckpt, cfg, 1, "bf16") == ["optim.amp: 'auto' -> 'bf16'"]


def _write(path, epoch, best_epoch, best_iou):
    ckpt = {"model_state_dict": {"w": torch.full((2,), float(epoch))}, "epoch": epoch}
    atomic_save({**ckpt, "best_epoch": best_epoch, "best_iou": best_iou}, str(path))


def _resume(path, same_run=True):
    return Resume(str(path), load_checkpoint(str(path)), [], same_run)


def _best(folder):
    ckpt = load_checkpoint(folder.best)
    return ckpt["epoch"], ckpt["best_iou"]


def test_a_best_of_an_abandoned_branch_gives_way_to_the_resumed_historys_best(tmp_path):
    """Epochs 1..3 written (best at 3), then resumed in place from epoch 2 (best at 1 then)."""
    folder = RunFolder(str(tmp_path))
    for epoch, best_epoch, iou in ((1, 1, 0.15), (2, 1, 0.15), (3, 3, 0.27)):
        _write(folder.numbered(epoch), epoch, best_epoch, iou)
    _write(folder.best, 3, 3, 0.27)
    assert settle_best(_resume(folder.numbered(1)), folder)  # the resumed file is epoch 1 itself
    assert _best(folder) == (1, 0.15)
    _write(folder.best, 3, 3, 0.27)
    assert settle_best(_resume(folder.numbered(2)), folder)  # epoch 1's numbered file is still there
    assert _best(folder) == (1, 0.15)
    _write(folder.best, 3, 3, 0.27)
    os.unlink(folder.numbered(1))
    assert not settle_best(_resume(folder.numbered(2)), folder)  # no file holds epoch 1: forget it
    assert not os.path.exists(folder.best)


def test_a_best_of_the_resumed_history_or_of_another_folder_is_left_alone(tmp_path):
    folder = RunFolder(str(tmp_path / "run"))
    _write(folder.numbered(2), 2, 1, 0.15)
    _write(folder.best, 1, 1, 0.15)
    before = open(folder.best, "rb").read()
    assert settle_best(_resume(folder.numbered(2)), folder)
    other = tmp_path / "other.pth"
    _write(other, 2, 2, 0.5)
    assert settle_best(_resume(other, same_run=False), folder)
    assert open(folder.best, "rb").read() == before
