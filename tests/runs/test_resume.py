from camodet.config import TrainConfig
from camodet.runs.resume import changed_settings


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
