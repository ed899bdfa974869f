import os
import stat

import torch

from camodet.runs.checkpoint import EMA, MODEL, RAW, atomic_save, model_weights


def test_checkpoints_get_the_folders_usual_mode_not_a_temp_files(tmp_path):
    """A team's shared run folder: a checkpoint is as readable as any other file written there."""
    old = os.umask(0o022)
    try:
        atomic_save({"epoch": 1, "w": torch.zeros(2)}, str(tmp_path / "last.pth"))
        open(tmp_path / "other.txt", "w").close()
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "last.pth").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "other.txt").st_mode) == 0o644
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1


def test_auto_takes_the_ema_weights_also_from_an_older_last_checkpoint_of_an_ema_run():
    """Earlier versions put the raw weights under model_state_dict in last.pth; validation used the EMA."""
    raw, ema = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    older_last = {MODEL: raw, EMA: ema, "weights": "raw"}
    older_best = {MODEL: ema, RAW: raw, EMA: ema, "weights": "ema"}
    for ckpt in (older_last, older_best):
        assert model_weights(ckpt, "auto") is ema
        assert model_weights(ckpt, "raw") is raw
    assert model_weights({MODEL: raw}, "auto") is raw  # a run without EMA validated its raw weights
