import os

import numpy as np
import pytest
import torch
from PIL import Image

from camodet import TTA, Predictor
from camodet.cli import main
from camodet.errors import ConfigError
from camodet.runs.checkpoint import CheckpointError

from ..conftest import real_samples_dir


def test_predict_accepts_path_pil_and_arrays(tiny_checkpoint, synth_root, tmp_path):
    p = Predictor.load(str(tiny_checkpoint))
    path = os.path.join(
        synth_root, "Test", "Image", sorted(os.listdir(os.path.join(synth_root, "Test", "Image")))[0]
    )
    rgb = np.asarray(Image.open(path).convert("RGB"))
    from_path = p.predict(path)
    assert from_path.shape == rgb.shape[:2] and from_path.dtype == np.float32
    assert 0 <= from_path.min() and from_path.max() <= 1
    np.testing.assert_allclose(p.predict(Image.open(path)), from_path, atol=1e-6)
    np.testing.assert_allclose(p.predict(rgb), from_path, atol=1e-6)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    np.testing.assert_allclose(p.predict(rgba), from_path, atol=1e-6)
    grey = Image.open(path).convert("L")
    assert p.predict(grey).shape == rgb.shape[:2] and p.predict(np.asarray(grey)).shape == rgb.shape[:2]
    with pytest.raises(ValueError, match="HxW"):
        p.predict(np.zeros((4, 4, 5)))


def test_exif_rotated_photo_gets_displayed_size(tiny_checkpoint, tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert Predictor.load(str(tiny_checkpoint)).predict(str(tmp_path / "phone.jpg")).shape == (70, 40)


def test_weights_choice(tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ema, raw = (
        Predictor.load(str(tiny_checkpoint), weights="ema"),
        Predictor.load(str(tiny_checkpoint), weights="raw"),
    )
    auto = Predictor.load(str(tiny_checkpoint))
    name = next(k for k in ckpt["raw_model_state_dict"] if k.startswith("decoder") and k.endswith("weight"))
    assert torch.equal(auto.model.state_dict()[name], ckpt["ema_state_dict"][name])  # best = EMA weights
    assert torch.equal(ema.model.state_dict()[name], ckpt["ema_state_dict"][name])
    assert torch.equal(raw.model.state_dict()[name], ckpt["raw_model_state_dict"][name])
    assert not torch.equal(ckpt["ema_state_dict"][name], ckpt["raw_model_state_dict"][name])


def test_tta_parse_and_effect(tiny_checkpoint):
    assert TTA.parse(["flip", "scales=0.75,1,1.25"]) == TTA(True, (0.75, 1.0, 1.25))
    assert TTA.parse(None) == TTA() and str(TTA(True, (0.5, 1.0))) == "flip scales=0.5,1.0"
    for bad in (["rotate"], ["scales=a,b"], ["scales=0.1"]):
        with pytest.raises(ConfigError, match="--tta"):
            TTA.parse(bad)
    img = np.random.default_rng(1).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    plain = Predictor.load(str(tiny_checkpoint))
    flip = Predictor.load(str(tiny_checkpoint), tta=TTA(flip=True))
    # flip TTA of a mirrored image is the mirror of flip TTA of the image
    np.testing.assert_allclose(flip.predict(img[:, ::-1]), flip.predict(img)[:, ::-1], atol=1e-5)
    assert not np.allclose(flip.predict(img), plain.predict(img), atol=1e-4)
    scaled = Predictor.load(str(tiny_checkpoint), tta=TTA(scales=(0.5, 1.0)))
    assert scaled.predict(img).shape == (50, 80)


def test_export_folder_loads_to_same_maps(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    img = np.random.default_rng(2).integers(0, 255, (45, 61, 3), dtype=np.uint8)
    a = Predictor.load(str(tiny_checkpoint)).predict(img)
    b = Predictor.load(str(out)).predict(img)
    assert np.array_equal(a, b)
    with pytest.raises(CheckpointError, match="not a camodet export folder"):
        Predictor.load(str(tmp_path))


@pytest.mark.slow
def test_onnx_matches_pytorch_on_random_and_real_inputs(onnx_export):
    """The exported graph (conftest's onnx_export: `camodet export --onnx`, shared with
    serving/test_export.py) gives PyTorch's probabilities on a dynamic batch of real photos."""
    ort = pytest.importorskip("onnxruntime")
    out = onnx_export
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    p = Predictor.load(str(out))
    from camodet.data.io import read_image
    from camodet.data.transforms import normalise, resize

    images = [np.random.default_rng(3).integers(0, 255, (70, 90, 3), dtype=np.uint8)]
    if real_samples_dir():
        folder = os.path.join(real_samples_dir(), "Image")
        images += [read_image(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    batch = np.stack([normalise(resize(im, p.img_size)) for im in images])  # a batch of 5: dynamic batch
    onnx_probs = session.run(None, {"image": batch})[0]
    with torch.no_grad():
        torch_probs = torch.sigmoid(p.logits(torch.from_numpy(batch))).numpy()
    assert onnx_probs.shape == (len(images), 1, p.img_size, p.img_size)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-3


def test_evaluate_needs_model_or_preds(synth_root, capsys):
    assert main(["evaluate", "--dataset-path", synth_root]) == 2
    assert "checkpoint (or export folder) or --preds-dir" in capsys.readouterr().err


def _rgba_and_16bit_pngs(folder) -> list[str]:
    """A half-transparent RGBA photo and a 16-bit grey one (levels far above 255)."""
    rng = np.random.default_rng(11)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    rgba[:, :20, 3] = 0  # a transparent band: black once composited, colours if alpha is dropped
    Image.fromarray(rgba).save(folder / "rgba.png")
    grey16 = rng.integers(0, 65536, (41, 29), dtype=np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    assert Image.open(folder / "grey16.png").mode.startswith("I")
    return [str(folder / "rgba.png"), str(folder / "grey16.png")]


def test_predict_converts_a_path_a_pil_image_and_an_array_alike(tiny_checkpoint, tmp_path):
    """The web app passes arrays, `camodet predict` paths: the same file gives the same map."""
    p = Predictor.load(str(tiny_checkpoint), device="cpu")
    for path in _rgba_and_16bit_pngs(tmp_path):
        from_path = p.predict(path)
        np.testing.assert_array_equal(p.predict(Image.open(path)), from_path, err_msg=path)
        np.testing.assert_array_equal(p.predict(np.asarray(Image.open(path))), from_path, err_msg=path)
