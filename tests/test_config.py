import argparse

import pytest

from camodet.cli import build_parser
from camodet.config import TrainConfig, add_arguments, from_args, save_yaml
from camodet.errors import ConfigError
from camodet.fields import load_yaml

REFERENCE = """train --dataset-path {data} --checkpoint-dir runs/batch8
    --resume-from {ckpt} --skip-stage1
    --backbone edgenext_base --num-experts 7
    --batch-size 8 --stage2-batch-size 2 --accumulation-steps 2
    --img-size 384 --epochs 120 --stage1-epochs 30
    --lr 0.0004 --stage2-lr 0.00018 --scheduler cosine --min-lr 0.00001
    --warmup-epochs 3 --progressive-unfreeze --deep-supervision
    --num-workers 4 --use-ema --ema-decay 0.999"""


def parse(argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return from_args(p.parse_args(argv))


def test_reference_workflow_flags_parse_verbatim(tmp_path):
    ckpt = tmp_path / "best_model.pth"
    ckpt.write_bytes(b"x")
    args = build_parser().parse_args(REFERENCE.format(data=tmp_path, ckpt=ckpt).split())
    cfg = from_args(args)
    assert cfg.optim.stage2_batch_size == 2 and cfg.optim.accumulation_steps == 2
    assert cfg.stages.skip_stage1 and cfg.stages.progressive_unfreeze and cfg.model.deep_supervision
    assert cfg.optim.use_ema and cfg.optim.ema_decay == 0.999 and cfg.stage2_lr == 0.00018
    assert cfg.data.dataset_path == [str(tmp_path)] and cfg.model.num_experts == 7
    cfg.validate()


def test_cli_beats_yaml_beats_defaults(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("optim:\n  lr: 0.002\n  batch_size: 3\nstages:\n  epochs: 9\n")
    cfg = parse(["--config", str(y), "--lr", "0.005"])
    assert cfg.optim.lr == 0.005  # CLI over YAML
    assert cfg.optim.batch_size == 3  # YAML over default
    assert cfg.optim.min_lr == TrainConfig().optim.min_lr  # default


def test_flat_yaml_keys_and_roundtrip(tmp_path):
    y = tmp_path / "flat.yaml"
    y.write_text("stage2-lr: 0.0001\nuse_ema: true\n")
    cfg = parse(["--config", str(y)])
    assert cfg.stage2_lr == 0.0001 and cfg.optim.use_ema
    out = tmp_path / "config.yaml"
    save_yaml(cfg, out)
    assert TrainConfig.from_dict(load_yaml(str(out))) == cfg


def test_no_amp_flag():
    assert parse(["--no-amp"]).optim.amp == "off"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs must be positive"),
        (["--epochs", "-3"], "--epochs must be positive"),
        (["--epochs", "10", "--stage1-epochs", "20"], "--stage1-epochs (20) exceeds --epochs (10)"),
        (["--accumulation-steps", "0"], "--accumulation-steps must be at least 1"),
        (["--min-lr", "0.01", "--lr", "0.001"], "--min-lr (0.01) is above --lr"),
        (["--min-lr", "0.0005", "--lr", "0.001", "--stage2-lr", "0.0001"], "is above --stage2-lr"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--top-k", "5", "--num-experts", "3"], "--top-k (5) must be between 1 and --num-experts (3)"),
        (["--ema-decay", "1.5"], "--ema-decay must be between 0 and 1"),
        (["--boundary-gain", "-1"], "--boundary-gain must be >= 0 (got -1)"),
        (["--dataset-path", "/no/such/dir"], "dataset path /no/such/dir does not exist"),
        (["--resume-from", "/no/such.pth"], "--resume-from /no/such.pth: no such file"),
        (["--images", "/tmp"], "--images and --masks must be given together"),
    ],
)
def test_rejected_values(argv, message, tmp_path):
    base = ["--dataset-path", str(tmp_path)] if "--dataset-path" not in argv else []
    with pytest.raises(ConfigError) as e:
        parse(base + argv).validate()
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_value_is_named(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="--lr: cannot read 'fast'"):
        parse(["--config", str(y)])
    y.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting 'optim.learning_rate'"):
        parse(["--config", str(y)])


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        (
            "optim:\n  scheduler: Cosine\n",
            "--scheduler: 'Cosine' in {file} is not one of cosine, constant, step",
        ),
        ("model:\n  gating: Dense\n", "--gating: 'Dense' in {file} is not one of topk, dense"),
        ("data:\n  augment: strong\n", "--augment: 'strong' in {file} is not one of full, flip"),
        ("optim:\n  amp: bf15\n", "--amp: 'bf15' in {file} is not one of auto, bf16, fp16, off"),
        ("optim:\n  amp: on\n", "--amp: True in {file} is not one of auto, bf16, fp16, off"),
        (
            "speed:\n  channels_last: maybe\n",
            "--channels-last: 'maybe' in {file} is not one of auto, on, off",
        ),
        ("optim:\n  batch_size: 3.7\n", "--batch-size: cannot read 3.7 from {file} as int"),
        ("stages:\n  epochs: true\n", "--epochs: cannot read True from {file} as int"),
        ("optim:\n  lr: null\n", "--lr: needs a value in {file}"),
        ("optim:\n  use_ema: maybe\n", "--use-ema: 'maybe' in {file} is not true or false"),
    ],
)
def test_bad_yaml_values_get_the_checks_flags_get(tmp_path, yaml_text, message):
    y = tmp_path / "run.yaml"
    y.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        parse(["--config", str(y)]).validate(check_paths=False)
    assert message.format(file=y) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "yaml_text, section, key, value",
    [
        ("speed:\n  channels_last: yes\n", "speed", "channels_last", "on"),  # YAML 1.1: yes/on are booleans
        ("speed:\n  channels_last: off\n", "speed", "channels_last", "off"),
        ("optim:\n  amp: off\n", "optim", "amp", "off"),
        ("optim:\n  batch_size: 4.0\n", "optim", "batch_size", 4),
        ("optim:\n  lr: 1e-4\n", "optim", "lr", 1e-4),  # YAML 1.1 reads this as text
    ],
)
def test_yaml_values_meant_plainly_are_read_so(tmp_path, yaml_text, section, key, value):
    y = tmp_path / "run.yaml"
    y.write_text(yaml_text)
    cfg = parse(["--config", str(y)]).validate(check_paths=False)
    got = getattr(getattr(cfg, section), key)
    assert got == value and type(got) is type(value)


def test_flags_and_yaml_share_one_check(tmp_path):
    with pytest.raises(ConfigError, match="^--scheduler: 'Cosine' is not one of cosine, constant, step$"):
        parse(["--scheduler", "Cosine"])
    with pytest.raises(ConfigError, match="^--batch-size: cannot read '3.5' from the command line as int"):
        parse(["--batch-size", "3.5"])
    cfg = TrainConfig()
    cfg.model.gating = "Dense"  # a config built in Python is checked too
    with pytest.raises(ConfigError, match="--gating: 'Dense' is not one of topk, dense"):
        cfg.validate(check_paths=False)


@pytest.mark.parametrize(
    "name", ["demo.yaml", "small.yaml", "cod-small.yaml", "cod-medium.yaml", "cod-large.yaml"]
)
def test_shipped_configs_read_and_validate(name):
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", name)
    cfg = parse(["--config", path]).validate(check_paths=False)
    if name == "cod-small.yaml":  # the choices camouflage changed against small.yaml
        assert (cfg.optim.backbone_lr_mult, cfg.optim.use_ema, cfg.stages.progressive_unfreeze) == (
            0.5,
            False,
            False,
        )
        assert cfg.data.augment == "flip"
        assert cfg.optim.stage2_lr == 0.001  # the CAMO LR grid's best over 3 seeds (RESULTS.md)
    if name == "cod-medium.yaml":  # cod-small.yaml at 4x the budget: more pixels, not more epochs
        small = parse(["--config", path.replace("cod-medium", "cod-small")])
        assert (cfg.data.img_size, cfg.stages.epochs, cfg.stages.stage1_epochs) == (224, 19, 4)
        for section in ("model", "optim"):
            assert getattr(cfg, section) == getattr(small, section)
        assert cfg.data.augment == small.data.augment and not cfg.stages.progressive_unfreeze
    if name == "cod-large.yaml":  # the ladder's top rung: cod-medium.yaml with a larger backbone and image
        medium = parse(["--config", path.replace("cod-large", "cod-medium")])
        assert (cfg.model.backbone, cfg.model.decoder, cfg.data.img_size) == (
            "tf_efficientnet_lite2",
            "moe",
            288,
        )
        assert cfg.optim == medium.optim and cfg.data.augment == medium.data.augment
        assert (cfg.stages.epochs, cfg.stages.stage1_epochs) == (20, 4)  # about 4800 CPU-s on CAMO
