import json
import os

import numpy as np
import pytest
import torch

from camodet import Predictor
from camodet.cli import main

from ..conftest import real_samples_dir

ort = pytest.importorskip("onnxruntime", reason="ONNX export needs pip install 'camodet[export]'")


def torch_probs(p: Predictor, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(p.logits(torch.from_numpy(x))).numpy()


@pytest.mark.slow
def test_onnx_takes_any_batch_height_and_width(onnx_export):
    import onnx

    assert sorted(os.listdir(onnx_export)) == [
        "config.json",
        "model.onnx",
        "model.safetensors",
        "model_fp16.onnx",
    ]
    dims = onnx.load(str(onnx_export / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, 3, H, W
    # the fp16 graph holds half-precision weights (converted from the fp32 graph), float32 in and out
    half_graph = onnx.load(str(onnx_export / "model_fp16.onnx")).graph
    weights = [t for t in half_graph.initializer if len(t.dims) == 4]  # the conv kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert half_graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    p = Predictor.load(str(onnx_export))
    fp32 = ort.InferenceSession(str(onnx_export / "model.onnx"), providers=["CPUExecutionProvider"])
    fp16 = ort.InferenceSession(str(onnx_export / "model_fp16.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 64, 64), (2, 3, 96, 160), (1, 3, 224, 128)):  # none of them the training size
        x = rng.standard_normal(shape).astype(np.float32)
        want = torch_probs(p, x)
        got = fp32.run(None, {"image": x})[0]
        assert got.shape == (shape[0], 1, *shape[2:]) and np.abs(got - want).max() < 1e-3
        half = fp16.run(None, {"image": x})[0]
        assert half.dtype == np.float32 and np.abs(half - want).max() < 2e-2


@pytest.mark.slow
@pytest.mark.skipif(real_samples_dir() is None, reason="needs ../shared/data/real_camo_samples")
def test_onnx_on_real_photos_at_their_aspect_ratio(onnx_export):
    """A photo resized keeping its aspect (sides rounded to multiples of 32), as a deployment
    that skips the square resize would feed it."""
    import cv2

    from camodet.data.io import read_image

    p = Predictor.load(str(onnx_export))
    session = ort.InferenceSession(str(onnx_export / "model.onnx"), providers=["CPUExecutionProvider"])
    folder = os.path.join(real_samples_dir(), "Image")
    for f in sorted(os.listdir(folder))[:2]:
        rgb = read_image(os.path.join(folder, f))
        h, w = rgb.shape[:2]
        scale = 160 / max(h, w)
        size = (max(64, round(w * scale / 32) * 32), max(64, round(h * scale / 32) * 32))
        x = p.norm.apply(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))[None]
        got = session.run(None, {"image": x})[0]
        assert got.shape == (1, 1, size[1], size[0]) and size[0] != size[1]
        assert np.abs(got - torch_probs(p, x)).max() < 1e-3


def test_conv_shortcut_is_exact_and_skipped_while_exporting(monkeypatch):
    """The decoder's reach-limited conv (a speed-up on small maps) gives the full conv's output;
    during export the full conv is traced, so one graph serves every size."""
    from camodet.models.experts import same_conv_on_reach

    conv = torch.nn.Conv2d(4, 4, 7, padding=9, dilation=3, groups=4)
    x = torch.randn(1, 4, 5, 6)
    torch.testing.assert_close(same_conv_on_reach(conv, x), conv(x))
    calls = []
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    monkeypatch.setattr(conv, "forward", lambda t: calls.append(t.shape) or torch.zeros(1))
    same_conv_on_reach(conv, x)
    assert calls == [x.shape]


def test_static_same_padding_equals_timms_on_every_size_the_graph_takes():
    from timm.layers import Conv2dSame

    from camodet.serving.export import StaticSamePadConv

    torch.manual_seed(0)
    for k, s, d in ((3, 2, 1), (5, 2, 1), (3, 1, 1), (3, 1, 2), (1, 1, 1)):
        conv = Conv2dSame(4, 6, k, stride=s, dilation=d)
        for h, w in ((32, 32), (64, 96), (8, 2)):
            x = torch.randn(2, 4, h, w)
            torch.testing.assert_close(StaticSamePadConv(conv)(x), conv(x), rtol=0, atol=1e-6)


def _tree(folder) -> dict:
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


def test_reexport_replaces_the_folder_whole(tiny_checkpoint, tmp_path):
    """A model.onnx of an earlier export must not sit beside the new config.json."""
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier model's graph")
    (out / "config.json").write_text("{}")
    assert main(["export", str(tiny_checkpoint), str(out) + "/"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert os.listdir(tmp_path) == ["deploy"]  # no staging or old folder left beside it
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_export_refuses_a_folder_holding_other_files(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(tiny_checkpoint), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds notes.txt, which is not part of an export" in err[0]
    assert _tree(out) == {"notes.txt": b"mine"}


def test_a_failed_onnx_export_leaves_the_folder_as_it_was(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import logging

    import camodet.serving.export

    out = tmp_path / "deploy"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    before = _tree(out)
    torch_onnx = logging.getLogger("torch.onnx")
    torch_onnx.setLevel(logging.INFO)

    def broken(module, args, path, **kwargs):
        open(path, "wb").write(b"half a graph")
        raise RuntimeError("Failed to export the model\nwith a long story")

    monkeypatch.setattr(torch.onnx, "export", broken)
    assert main(["export", str(tiny_checkpoint), str(out), "--onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch.onnx.export could not convert this model (RuntimeError: Failed" in err[0]
    assert torch_onnx.level == logging.INFO  # the exporter's loggers are restored
    assert _tree(out) == before and os.listdir(tmp_path) == ["deploy"]

    def fails_its_check(model, img_size, path):
        open(path, "wb").write(b"a graph that differs from PyTorch")
        raise camodet.serving.export.ExportError(f"{path}: ONNX Runtime differs from PyTorch")

    monkeypatch.setattr(camodet.serving.export, "export_onnx", fails_its_check)
    assert main(["export", str(tiny_checkpoint), str(tmp_path / "new"), "--onnx"]) == 2
    assert "differs from PyTorch" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["deploy"]  # the unchecked graph is nowhere on disk


def test_fp16_alone_writes_only_the_half_graph(tiny_checkpoint, onnx_export, tmp_path, capsys, monkeypatch):
    """--fp16 without --onnx: the fp32 graph it is converted from is traced, then not kept."""
    import shutil

    import camodet.serving.export

    def traced_already(model, img_size, path):  # the session's trace: each costs a minute of CPU
        shutil.copyfile(onnx_export / "model.onnx", path)
        return 0.0

    monkeypatch.setattr(camodet.serving.export, "export_onnx", traced_already)
    out = tmp_path / "half"
    assert main(["export", str(tiny_checkpoint), str(out), "--fp16"]) == 0
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "model_fp16.onnx"]
    assert "the fp16 graph within" in capsys.readouterr().out


def test_an_export_holds_one_set_of_weights_and_says_which(tiny_checkpoint, synth_root, tmp_path, capsys):
    """tiny_checkpoint is an EMA run: auto exports (and scores) the EMA weights and records 'ema';
    asking that export for the raw weights, which it does not hold, is refused in one line by
    evaluate, predict and a re-export, where the EMA weights were scored or copied under the name
    'raw'. What metrics.json and config.json record is the set that was used."""
    from safetensors.torch import load_file

    from camodet.serving.export_format import weights_fingerprint

    ema, raw = tmp_path / "ema", tmp_path / "raw"
    assert main(["export", str(tiny_checkpoint), str(ema)]) == 0
    assert main(["export", str(tiny_checkpoint), str(raw), "--weights", "raw"]) == 0
    assert json.load(open(ema / "config.json"))["weights"] == "ema"
    assert json.load(open(raw / "config.json"))["weights"] == "raw"
    capsys.readouterr()
    data = ["--dataset-path", synth_root, "--num-workers", "0"]
    photo = os.path.join(synth_root, "Test", "Image")
    refused = [
        (["evaluate", str(ema), *data, "--weights", "raw", "--out", str(tmp_path / "e")], "ema", "raw"),
        (["predict", str(ema), photo, "--out", str(tmp_path / "p"), "--weights", "raw"], "ema", "raw"),
        (["export", str(ema), str(tmp_path / "x"), "--weights", "raw"], "ema", "raw"),
        (["export", str(raw), str(tmp_path / "x"), "--weights", "ema"], "raw", "ema"),
    ]
    for cmd, held, asked in refused:
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"holds one set of weights, the {held} ones; --weights {asked}" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["ema", "raw"]  # nothing written
    assert Predictor.load(str(ema), weights="ema").weights == "ema"  # the very set it holds is fine

    def scored(model: str, *weights: str) -> dict:
        out = tmp_path / f"eval-{len(os.listdir(tmp_path))}"
        assert main(["evaluate", model, *data, "--out", str(out), *weights]) == 0
        return json.load(open(out / "metrics.json"))

    from_export = scored(str(raw), "--weights", "raw")
    from_checkpoint = scored(str(tiny_checkpoint), "--weights", "raw")
    assert from_export["_scored"]["weights"] == from_checkpoint["_scored"]["weights"] == "raw"
    raw_sha = weights_fingerprint(load_file(raw / "model.safetensors"))
    assert from_export["_scored"]["weights_sha256"] == from_checkpoint["_scored"]["weights_sha256"] == raw_sha
    assert from_export["COD10K"] == from_checkpoint["COD10K"]
    auto = scored(str(ema))["_scored"]
    ema_sha = weights_fingerprint(load_file(ema / "model.safetensors"))
    assert auto["weights"] == "ema" and auto["weights_sha256"] == ema_sha
    assert ema_sha != raw_sha  # the EMA and raw weights differ, so the test can tell them apart
    assert main(["export", str(ema), str(tmp_path / "copy")]) == 0
    assert json.load(open(tmp_path / "copy" / "config.json"))["weights"] == "ema"


def test_a_full_disk_during_a_reexport_leaves_the_previous_export(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    import errno

    import safetensors.torch

    out = tmp_path / "deploy"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    before = _tree(out)
    photo = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    want = Predictor.load(str(out)).predict(photo)

    def disk_full(state, path, *args, **kwargs):
        open(path, "wb").write(b"the first bytes")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    capsys.readouterr()
    assert main(["export", str(tiny_checkpoint), str(out), "--weights", "raw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: no space left on the disk holding {tmp_path}" in err[0], err
    assert "free space" in err[0]
    assert _tree(out) == before and os.listdir(tmp_path) == ["deploy"]  # no temp folder left
    np.testing.assert_array_equal(Predictor.load(str(out)).predict(photo), want)


@pytest.mark.slow
def test_evaluating_an_onnx_graph_records_the_graph_it_scored(onnx_export, synth_root, tmp_path):
    """The graph, not the safetensors weights beside it, is what was scored (an int8 graph scores
    otherwise), so the record names the graph's fingerprint and no weights' one for push to match."""
    from camodet.serving.export_format import file_fingerprint

    graph = str(onnx_export / "model_fp16.onnx")
    args = ["evaluate", graph, "--dataset-path", synth_root, "--num-workers", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    scored = json.load(open(tmp_path / "metrics.json"))["_scored"]
    assert scored == {
        "model": graph,
        "epoch": 1,
        "weights": "ema",
        "graph_sha256": file_fingerprint(graph),
        "tta": "none",
    }
