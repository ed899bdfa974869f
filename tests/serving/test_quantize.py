import json
import os
import shutil

import numpy as np
import pytest

from camodet import Predictor
from camodet.cli import main
from camodet.serving.quantize import mask_iou, split_images

pytest.importorskip("onnxruntime", reason="int8 export needs pip install 'camodet[export]'")


def traced_already(onnx_export):
    """export_onnx that copies the session's traced fp32 graph: each trace costs 20-40 s of CPU."""

    def export_onnx(model, img_size, path):
        shutil.copyfile(onnx_export / "model.onnx", path)
        return 0.0

    return export_onnx


@pytest.fixture(scope="module")
def int8_export(tiny_checkpoint, onnx_export, synth_root, tmp_path_factory):
    """One export with model.onnx and model_int8.onnx, calibrated on the synthetic training photos."""
    import camodet.serving.export as export_module

    out = tmp_path_factory.mktemp("int8") / "export"
    images = os.path.join(synth_root, "Train", "Image")
    args = ["export", str(tiny_checkpoint), str(out), "--int8", "--calibration", images]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "export_onnx", traced_already(onnx_export))
        assert main([*args, "--calibration-count", "8", "--min-agreement", "0.5"]) == 0
    return out


@pytest.mark.slow
def test_int8_export_writes_a_graph_that_predictor_and_predict_run(int8_export, synth_root, tmp_path, capsys):
    assert sorted(os.listdir(int8_export)) == [
        "config.json",
        "model.onnx",
        "model.safetensors",
        "model_int8.onnx",
    ]
    facts = json.loads((int8_export / "config.json").read_text())["int8"]
    assert facts["method"] == "static" and facts["calibration_images"] == 8 and facts["held_images"] == 5
    assert facts["agreement_mean_iou"] >= 0.5 and facts["fp32_images_per_s"] > 0
    tmp = os.path.join(synth_root, "Test", "Image")
    photo = os.path.join(tmp, sorted(os.listdir(tmp))[0])
    fp32 = Predictor.load(str(int8_export), runtime="onnx").predict(photo)
    int8 = Predictor.load(str(int8_export / "model_int8.onnx")).predict(photo)
    torch_probs = Predictor.load(str(int8_export)).predict(photo)
    assert fp32.shape == int8.shape == torch_probs.shape
    assert np.abs(fp32 - torch_probs).max() < 1e-3  # the fp32 graph through the Predictor is PyTorch's
    assert mask_iou(fp32, int8) > 0.5 and not np.array_equal(fp32, int8)  # really the quantised graph
    out = tmp_path / "pred"
    graph = str(int8_export / "model_int8.onnx")
    assert main(["predict", graph, tmp, "--out", str(out), "--runtime", "onnx", "--num-workers", "0"]) == 0
    assert sorted(os.listdir(out / "masks")) == sorted(
        os.path.splitext(f)[0] + ".png" for f in os.listdir(tmp)
    )


@pytest.mark.slow
def test_int8_below_the_threshold_is_refused_and_the_folder_kept(
    int8_export, onnx_export, tiny_checkpoint, synth_root, tmp_path, capsys, monkeypatch
):
    import camodet.serving.export as export_module

    out = tmp_path / "export"
    shutil.copytree(int8_export, out)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    import camodet.serving.quantize as quantize_module

    monkeypatch.setattr(export_module, "export_onnx", traced_already(onnx_export))
    monkeypatch.setattr(quantize_module, "mask_iou", lambda a, b: 0.9)  # every held mask 0.9 apart
    images = os.path.join(synth_root, "Train", "Image")
    args = ["export", str(tiny_checkpoint), str(out), "--int8", "--calibration", images]
    assert main([*args, "--calibration-count", "4", "--min-agreement", "0.95"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mean IoU 0.9000" in err and "--min-agreement 0.95" in err
    assert "nothing was written" in err
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no staging folder left beside it


def test_int8_flags_are_checked_before_any_work(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(tiny_checkpoint), str(out), "--int8"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert (
        main(["export", str(tiny_checkpoint), str(out), "--int8", "--calibration", str(tmp_path / "no")]) == 2
    )
    assert "no such file" in capsys.readouterr().err and not out.exists()


def test_the_calibration_photos_and_the_agreement_are_checked_before_any_tracing(
    tiny_checkpoint, synth_root, tmp_path, capsys, monkeypatch
):
    """One photo, an unreadable one, or a --min-agreement outside (0, 1] was refused only after the
    fp32 trace (a minute or more of CPU), or not at all; each is one line before the model loads."""
    import camodet.serving.export as export_module

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded or traced before the flags were checked")

    monkeypatch.setattr(export_module, "export_onnx", no_work)
    monkeypatch.setattr(export_module.Predictor, "load", no_work)
    one, some = tmp_path / "one", tmp_path / "some"
    one.mkdir()
    some.mkdir()
    photos = os.path.join(synth_root, "Train", "Image")
    for name in sorted(os.listdir(photos))[:3]:
        shutil.copy(os.path.join(photos, name), some / name)
    shutil.copy(os.path.join(photos, name), one / name)
    (some / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "export"
    int8 = ["export", str(tiny_checkpoint), str(out), "--int8", "--calibration"]
    for args, says in (
        ([str(one)], "--calibration: found 1 image(s), need at least 2"),
        ([str(some)], f"--calibration: {some / 'broken.jpg'}: unreadable image"),
        ([str(some), "--min-agreement", "0"], "--min-agreement must be above 0 and at most 1 (got 0)"),
        ([str(some), "--min-agreement", "1.01"], "--min-agreement must be above 0 and at most 1 (got 1.01)"),
        ([str(some), "--min-agreement", "nan"], "--min-agreement must be above 0 and at most 1 (got nan)"),
    ):
        assert main([*int8, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["one", "some"]


def test_held_images_never_calibrate():
    paths = [f"p{i}.jpg" for i in range(50)]
    calibration, held = split_images(paths, count=200)
    assert len(held) == 10 and not set(held) & set(calibration) and len(calibration) == 40
    assert split_images(paths, count=5)[0] == calibration[:5]  # the count takes a prefix, held stays


@pytest.mark.parametrize("weights, activations, keep", [("uint8", "uint8", "ends"), ("int8", "int8", "none")])
def test_int8_settings_reach_the_graph(weights, activations, keep, onnx_export, tmp_path):
    """The variants benchmarks/int8_cpu.py measures are the graphs it names (u8u8-ends, s8s8): the
    weights' and activations' types and the convs left in fp32 are what the written graph holds."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from camodet.serving.quantize import Int8Settings, quantize

    rng = np.random.default_rng(0)
    feed = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(2)]
    settings = Int8Settings(weight_type=weights, activation_type=activations, keep_float=keep)
    assert quantize(str(onnx_export / "model.onnx"), str(tmp_path / "q.onnx"), feed, settings) == "static"
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    constants = {t.name: t for t in graph.initializer}
    # a DequantizeLinear of a computed tensor is an activation's; of an initializer, a weight's, or a
    # bias's (int32 whatever the settings)
    zero_points = {"weight": set(), "bias": set(), "activation": set()}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3:
            zero = constants[node.input[2]].data_type
            constant = node.input[0] in constants
            kind = "activation" if not constant else "bias" if zero == TensorProto.INT32 else "weight"
            zero_points[kind].add(zero)
    types = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}
    assert zero_points == {
        "weight": {types[weights]},
        "bias": {TensorProto.INT32},
        "activation": {types[activations]},
    }
    convs = [n for n in graph.node if n.op_type == "Conv"]
    float_weight = [n for n in convs if n.input[1] in constants]  # its weight not dequantised
    assert [n.name for n in float_weight] == ([convs[0].name, convs[-1].name] if keep == "ends" else [])
    assert all(numpy_helper.to_array(constants[n.input[1]]).dtype == np.float32 for n in float_weight)


def test_int8_settings_without_a_static_format_are_refused():
    """ONNX Runtime has no int8-activation, uint8-weight format: quantize() fell back to dynamic."""
    from camodet.serving.quantize import Int8Settings, QuantizeError

    with pytest.raises(QuantizeError, match="^int8 activations with uint8 weights: ONNX Runtime has no"):
        Int8Settings(weight_type="uint8", activation_type="int8")
