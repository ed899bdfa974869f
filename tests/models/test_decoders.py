"""Every decoder behind the one contract, through every path a user takes: a model test reused per
decoder in a few lines (as segmentation_models_pytorch's base test class is), then a tiny training
per decoder that beats its untrained self, resumes exactly, rolls back, exports to ONNX matching
PyTorch, round-trips through an export folder and refuses to load into another decoder.

The moe decoder's training paths are the rest of the suite's (tests/engine, tests/serving); here it
takes part in the model-level tests and in the refused cross-decoder load."""

import json
import os

import numpy as np
import pytest
import torch

from camodet import Predictor
from camodet.cli import main
from camodet.config import DECODER_NAMES, ModelConfig
from camodet.errors import ConfigError
from camodet.evaluation.protocol import evaluate
from camodet.fields import make
from camodet.models import build_model, check_model
from camodet.models.decoders import DECODERS
from camodet.models.losses import LossSettings, total_loss
from camodet.options import EvaluateOptions
from camodet.runs import history
from camodet.runs.checkpoint import load_checkpoint
from camodet.serving.predictor import TTA

from ..conftest import poison_weights_at, tiny_flags

NEW = ["fpn", "sinet", "zoom"]


def tiny(decoder: str, backbone: str = "edgenext_xx_small", **kw) -> torch.nn.Module:
    return build_model(ModelConfig(backbone=backbone, decoder=decoder, decoder_channels=16, **kw))


def test_every_configured_decoder_is_built():
    assert tuple(DECODERS) == DECODER_NAMES and DECODER_NAMES[0] == ModelConfig().decoder == "moe"


@pytest.mark.parametrize("backbone", ["edgenext_xx_small", "resnet18", "tf_efficientnet_lite0"])
@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_forward_backward_with_side_outputs(decoder, backbone):
    torch.manual_seed(0)
    model = tiny(decoder, backbone, deep_supervision=True)
    x = torch.randn(2, 3, 64, 128)
    out = model(x)
    assert out.logits.shape == (2, 1, 64, 128)
    assert len(out.side_logits) == len(model.side_weights) >= 3
    assert all(s.shape == out.logits.shape for s in out.side_logits)
    loss, parts = total_loss(
        out, (torch.rand(2, 1, 64, 128) > 0.5).float(), LossSettings.for_model(model, 0.01)
    )
    loss.backward()
    assert torch.isfinite(loss) and "side" in parts
    for part in (model.decoder, model.backbone):  # every part learns, the deepest backbone stage too
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    without = tiny(decoder, backbone)(x)
    assert without.side_logits == [] and without.logits.shape == out.logits.shape


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_batch_equals_one_at_a_time_and_grad_checkpointing_changes_nothing(decoder):
    torch.manual_seed(0)
    model = tiny(decoder, deep_supervision=True).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched = model(x).logits
        single = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-4)
    model.train()
    y = (torch.rand(3, 1, 64, 64) > 0.5).float()
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        total_loss(model(x), y, LossSettings.for_model(model, 0.01))[0].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_frozen_backbone_gets_no_gradient_and_stays_in_eval(decoder):
    model = tiny(decoder, "resnet18")
    model.set_frozen_groups(set(range(model.backbone.num_groups)))
    model.train()
    total_loss(
        model(torch.randn(2, 3, 64, 64)), torch.ones(2, 1, 64, 64), LossSettings.for_model(model, 0.01)
    )[0].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not any(m.training for m in model.backbone.modules_of_group(0))
    assert model.decoder.training


def test_zoom_takes_sides_that_are_multiples_of_two_strides():
    assert tiny("zoom").stride == 64 and tiny("sinet").stride == 32
    check_model(ModelConfig(backbone="edgenext_xx_small", decoder="zoom"), 128)
    with pytest.raises(
        ConfigError, match=r"--img-size 160 is not a multiple of 2 x .*--decoder zoom.*use 128 or 192"
    ):
        check_model(ModelConfig(backbone="edgenext_xx_small", decoder="zoom"), 160)


def test_experts_belong_to_the_moe_decoder(synth_root, tmp_path, capsys):
    args = ["train", *tiny_flags(synth_root, tmp_path / "run"), "--decoder", "sinet"]  # --num-experts 3
    assert main(args) == 2
    assert (
        "--num-experts 3: experts are the moe decoder's; --decoder sinet has none" in capsys.readouterr().err
    )
    assert not os.path.exists(tmp_path / "run")


def test_summary_names_the_decoder_and_counts_it(capsys):
    for decoder in DECODER_NAMES:
        flags = ["--backbone", "edgenext_xx_small", "--img-size", "64", "--decoder", decoder]
        assert main(["model", "summary", *flags, "--json"]) == 0
        s = json.loads(capsys.readouterr().out)
        assert s["decoder"] == decoder and s["params"]["decoder"] > 0 and s["gflops"] > s["backbone_gflops"]
    # with no flags it describes what train builds: ModelConfig's defaults
    assert main(["model", "summary", "--backbone", "edgenext_xx_small", "--img-size", "64"]) == 0
    assert "--decoder moe" in capsys.readouterr().out


# -- a tiny training per decoder: the whole path ----------------------------------------------------


def decoder_flags(synth_root, run_dir, decoder: str) -> list[str]:
    """tiny_flags for `decoder`, with every training feature the resume must bring back."""
    flags = tiny_flags(synth_root, run_dir)
    flags[flags.index("--num-experts") + 1] = "1"
    i = flags.index("--epochs")
    flags[i + 1] = "6"
    return flags + [
        "--decoder",
        decoder,
        "--deep-supervision",
        "--progressive-unfreeze",
        "--accumulation-steps",
        "2",
        "--use-ema",
        "--ema-decay",
        "0.8",
        "--warmup-epochs",
        "1",
        "--lr",
        "0.003",
        "--uncertainty-loss-weight",
        "0.5" if decoder == "zoom" else "0",
        "--no-tensorboard",
    ]


@pytest.fixture(scope="module", params=NEW)
def trained(request, synth_root, tmp_path_factory):
    """(decoder, flags, run folder) of a 6-epoch run keeping every epoch's checkpoint."""
    run_dir = tmp_path_factory.mktemp(f"run_{request.param}") / "full"
    flags = decoder_flags(synth_root, run_dir, request.param)
    assert main(["train", *flags, "--keep-last", "6"]) == 0
    return request.param, flags, run_dir


@pytest.mark.slow
def test_training_beats_the_untrained_model(trained, synth_root):
    decoder, flags, run_dir = trained
    torch.manual_seed(1)  # the run's --seed: the model it started from
    cfg = load_checkpoint(run_dir / "last.pth")["config"]
    untrained = Predictor(
        build_model(ModelConfig(**{**cfg["model"], "pretrained_path": None})), 64, torch.device("cpu")
    )
    before = evaluate(untrained, make(EvaluateOptions, dataset_path=[synth_root], num_workers=0))["COD10K"]
    after = evaluate(
        Predictor.load(str(run_dir / "last.pth")),
        make(EvaluateOptions, dataset_path=[synth_root], num_workers=0),
    )["COD10K"]
    assert after["IoU"] > before["IoU"] + 0.1 and after["MAE"] < before["MAE"], (decoder, before, after)


@pytest.mark.slow
def test_resume_equals_the_uninterrupted_run(trained, tmp_path):
    decoder, flags, run_dir = trained
    resumed = tmp_path / "resumed"
    i = flags.index("--checkpoint-dir")
    args = flags[:i] + ["--checkpoint-dir", str(resumed)] + flags[i + 2 :]
    assert main(["train", *args, "--resume-from", str(run_dir / "epoch_3.pth")]) == 0
    a, b = load_checkpoint(run_dir / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert a["epoch"] == b["epoch"] == 6 and a["global_step"] == b["global_step"]
    assert a["config"]["model"]["decoder"] == decoder
    for key in ("model_state_dict", "ema_state_dict", "raw_model_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    va = [r["val"] for r in history.read(run_dir / "metrics.jsonl") if r["type"] == "epoch"][3:]
    vb = [r["val"] for r in history.read(resumed / "metrics.jsonl") if r["type"] == "epoch"]
    assert va == vb and len(vb) == 3


@pytest.mark.slow
def test_onnx_export_matches_pytorch_and_the_folder_round_trips(trained, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs pip install 'camodet[export]'")
    import onnxruntime as ort

    decoder, _, run_dir = trained
    out = tmp_path / "export"
    assert main(["export", str(run_dir / "best_model.pth"), str(out), "--onnx", "--fp16"]) == 0
    assert (out / "model_fp16.onnx").is_file()  # checked against PyTorch by the export itself
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["decoder"] == decoder
    ckpt, folder = Predictor.load(str(run_dir / "best_model.pth")), Predictor.load(str(out))
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ckpt.predict(image), folder.predict(image))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    stride = config["input"]["multiple_of"]
    assert stride == (64 if decoder == "zoom" else 32)
    x = np.random.default_rng(1).standard_normal((2, 3, 2 * stride, 3 * stride)).astype(np.float32)
    with torch.no_grad():
        want = torch.sigmoid(folder.logits(torch.from_numpy(x))).numpy()
    assert np.abs(session.run(None, {"image": x})[0] - want).max() < 1e-3
    # test-time scales keep the sides the decoder takes
    folder.tta = TTA.parse(["flip", "scales=0.75,1.25"])
    assert folder.predict(image).shape == (70, 90)


@pytest.mark.slow
def test_a_checkpoint_is_refused_by_another_decoder(trained, tmp_path, capsys):
    decoder, flags, run_dir = trained
    other = "moe" if decoder != "moe" else "fpn"
    i = flags.index("--checkpoint-dir")
    args = flags[:i] + ["--checkpoint-dir", str(tmp_path / "other")] + flags[i + 2 :]
    args[args.index("--decoder") + 1] = other
    assert main(["train", *args, "--resume-from", str(run_dir / "last.pth")]) == 2
    err = capsys.readouterr().err
    assert f"another architecture: decoder={decoder!r} (this run: {other!r})" in err and "--init-from" in err
    assert not os.path.exists(tmp_path / "other" / "last.pth")


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["sinet", "zoom"])
def test_a_poisoned_step_rolls_back_and_finishes(decoder, synth_root, tmp_path, monkeypatch):
    flags = decoder_flags(synth_root, tmp_path / "run", decoder)
    flags[flags.index("--epochs") + 1] = "2"
    poison_weights_at(monkeypatch, 3)
    assert main(["train", *flags]) == 0
    events = [r for r in history.read(tmp_path / "run" / "metrics.jsonl") if r["type"] == "rollback"]
    assert len(events) == 1
    ckpt = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["epoch"] == 2 and all(torch.isfinite(t).all() for t in ckpt["model_state_dict"].values())


def test_moe_checkpoints_from_before_decoders_load(tmp_path):
    """A checkpoint written before --decoder existed: heads at the top level, no decoder in its config."""
    torch.manual_seed(0)
    model = tiny("moe", deep_supervision=True)
    old = {
        (k.removeprefix("decoder.") if k.startswith(("decoder.head.", "decoder.side_heads.")) else k): v
        for k, v in model.state_dict().items()
    }
    assert "head.0.weight" in old
    fresh = tiny("moe", deep_supervision=True)
    fresh.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


@pytest.mark.slow
def test_plan_and_video_work_with_the_multi_scale_decoder(trained, tmp_path, capsys):
    """The zoom decoder runs the image at three scales: `camodet plan` measures its real step and
    writes it into the profiles, and a video is predicted frame by frame at the model's stride."""
    import cv2
    import yaml

    decoder, flags, run_dir = trained
    if decoder != "zoom":
        pytest.skip("the multi-scale decoder's paths; the others share the single-scale ones")
    plan = [f for f in flags if f not in ("--keep-last",)]
    plan[plan.index("--checkpoint-dir") + 1] = str(tmp_path / "plan_run")
    args = ["plan", *plan, "--candidates", "2", "--steps", "1", "--out-dir", str(tmp_path / "plans")]
    assert main(args) == 0
    profile = yaml.safe_load((tmp_path / "plans" / "plan-balanced.yaml").read_text())
    assert profile["model"]["decoder"] == "zoom"
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (90, 70))
    rng = np.random.default_rng(0)
    for _ in range(5):
        writer.write(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8))
    writer.release()
    capsys.readouterr()
    assert main(["predict", str(run_dir / "best_model.pth"), str(clip), "--out", str(tmp_path / "v")]) == 0
    assert "5 frames, 90x70" in capsys.readouterr().out
    assert (tmp_path / "v" / "clip" / "mask.mp4").is_file()
