import os
import stat

import torch

from camodet.runs.checkpoint import EMA, MODEL, POSITION, RAW, RunState, atomic_save, model_weights


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


def test_a_warm_restart_inside_an_epoch_does_not_count_that_epochs_first_steps_twice():
    """Saved 3 optimizer steps (5 micro-batches, accumulation 2) into epoch 4, which began at step 30:
    a warm restart trains epoch 4 from its beginning, so it continues from step 30; an exact
    resume continues the epoch, from step 33."""
    ckpt = {
        "epoch": 3,
        "global_step": 33,
        POSITION: {"epoch": 4, "micro_step": 5},
        "config": {"optim": {"accumulation_steps": 2}},
    }
    warm, exact = RunState(), RunState()
    warm.load_state_dict(ckpt, exact=False)
    exact.load_state_dict(ckpt, exact=True)
    assert (warm.global_step, exact.global_step) == (30, 33)
    at_epoch_end = {k: v for k, v in ckpt.items() if k != POSITION}
    warm.load_state_dict(at_epoch_end, exact=False)
    assert warm.global_step == 33
