import json
import os

import numpy as np
import pytest
from PIL import Image

from camodet.cli import main
from camodet.serving.predict import expand_inputs, expand_patterns, unique_stems

from ..conftest import files_under, real_samples_dir


@pytest.mark.skipif(real_samples_dir() is None, reason="needs ../shared/data/real_camo_samples")
def test_predict_real_photos_at_their_sizes(tiny_checkpoint, tmp_path, capsys):
    folder = os.path.join(real_samples_dir(), "Image")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_checkpoint), folder, "--out", str(out), "--num-workers", "0"]) == 0
    names = sorted(os.listdir(folder))
    assert len(names) == 4
    for f in names:
        stem = os.path.splitext(f)[0]
        w, h = Image.open(os.path.join(folder, f)).size
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(out / "probs" / f"{stem}.png")).shape == (h, w)
        assert Image.open(out / "overlays" / f"{stem}.jpg").size == (w, h)
        cut = Image.open(out / "cutouts" / f"{stem}.png")
        assert cut.mode == "RGBA" and cut.size == (w, h)
    assert "of 4 images" in capsys.readouterr().out


def test_predict_lists_unreadable_inputs_and_goes_on(tiny_checkpoint, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(src / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 20), dtype=np.uint8)).save(src / "grey.png")
    Image.fromarray(rng.integers(0, 255, (33, 44, 4), dtype=np.uint8)).save(src / "rgba.png")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(tiny_checkpoint),
            str(src),
            str(tmp_path / "missing.jpg"),
            str(src / "*.png"),
            "--out",
            str(out),
            "--num-workers",
            "1",
            "--threshold",
            "0.3",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1 and "cutouts of 3 of 4 images" in captured.out
    assert f"skipped {src / 'broken.jpg'}: unreadable image (" in captured.err
    assert "missing.jpg: no such file" in captured.err and "--skip-bad-files" not in captured.err
    assert sorted(os.listdir(out / "masks")) == ["a.png", "grey.png", "rgba.png"]
    assert np.asarray(Image.open(out / "masks" / "grey.png")).shape == (30, 20)
    assert main(["predict", str(tiny_checkpoint), str(src), "--out", str(out), "--threshold", "1.5"]) == 2


def test_inputs_expand_and_stems_stay_unique(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        Image.new("RGB", (8, 8)).save(tmp_path / d / "same.png")
    paths, problems = expand_inputs([str(tmp_path / "x"), str(tmp_path / "*" / "same.png")])
    assert len(paths) == 2 and not problems
    assert unique_stems(paths) == ["same", "same_2"]


def test_stems_never_take_a_name_another_input_has():
    # a duplicate's suffix must not land on an input's own stem ('c/x_2.jpg' keeps 'x_2')
    assert unique_stems(["a/x.jpg", "b/x.jpg", "c/x_2.jpg"]) == ["x", "x_3", "x_2"]
    assert unique_stems(["c/x_2.jpg", "a/x.jpg", "b/x.jpg", "d/x.png"]) == ["x_2", "x", "x_3", "x_4"]
    assert unique_stems(["a/x.jpg", "b/x_2.jpg", "c/x_2.png"]) == ["x", "x_2", "x_2_2"]
    # inputs that did not collide keep the names they always had
    assert unique_stems(["a/x.jpg", "b/x.jpg", "b/y.png", "c/x.png"]) == ["x", "x_2", "y", "x_3"]
    assert unique_stems(["a/x.jpg", "b/x.jpg", "c/x_3.jpg"]) == ["x", "x_2", "x_3"]


def test_patterns_expand_to_sorted_matches_and_unmatched_ones_stay(tmp_path):
    for name in ("b.mp4", "a.mp4", "c.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "frames").mkdir()
    literal = tmp_path / "x[1].jpg"  # an existing path is never read as a pattern
    literal.write_bytes(b"")
    missing = str(tmp_path / "nothing" / "*.mp4")
    got = expand_patterns([str(tmp_path / "*.mp4"), str(literal), missing, str(tmp_path / "a.mp4")])
    assert got == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), str(literal), missing]
    assert expand_patterns([str(tmp_path / "f*")]) == [str(tmp_path / "f*")]  # folders only on request
    assert expand_patterns([str(tmp_path / "f*")], folders=True) == [str(tmp_path / "frames")]


def _photo(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)


def test_outputs_stay_keyed_to_their_inputs_over_reruns(tiny_checkpoint, tmp_path, capsys):
    """camA/0001.jpg and camB/0001.jpg are named 0001 and 0001_2; a rerun with cam0/0001.jpg added
    (listed first) named cam0 '0001', found that name's files and skipped it, camA's mask under
    cam0's name. Names stay with their inputs, a new input gets a free name, and exactly the
    inputs not done (new, or changed since) are predicted."""
    cams, out = tmp_path / "cams", tmp_path / "out"
    for seed, cam in enumerate(("camA", "camB", "cam0")):
        _photo(cams / cam / "0001.jpg", seed)

    def predict(*args, out=out):
        return main(
            ["predict", str(tiny_checkpoint), *map(str, args), "--out", str(out), "--num-workers", "0"]
        )

    assert predict(cams / "camA" / "0001.jpg", cams / "camB" / "0001.jpg") == 0
    first = files_under(out)
    assert sorted(os.listdir(out / "masks")) == ["0001.png", "0001_2.png"]
    capsys.readouterr()
    assert predict(cams / "*" / "0001.jpg", "--skip-existing") == 0
    assert "cutouts of 1 of 3 images" in capsys.readouterr().out
    manifest = json.load(open(out / "manifest.json"))
    stems = {os.path.relpath(k, cams): v["stem"] for k, v in manifest["inputs"].items()}
    assert stems == {"camA/0001.jpg": "0001", "camB/0001.jpg": "0001_2", "cam0/0001.jpg": "0001_3"}
    assert manifest["settings"]["weights"] == "ema"  # what auto took from this EMA run
    assert all(files_under(out)[f] == data for f, data in first.items() if f != "manifest.json")
    assert predict(cams / "cam0" / "0001.jpg", out=tmp_path / "alone") == 0  # cam0's outputs are its own
    alone = (tmp_path / "alone" / "probs" / "0001.png").read_bytes()
    assert (out / "probs" / "0001_3.png").read_bytes() == alone
    _photo(cams / "camA" / "0001.jpg", 7)  # a new picture under an old name is not done
    capsys.readouterr()
    assert predict(cams / "*" / "0001.jpg", "--skip-existing") == 0
    assert "cutouts of 1 of 3 images" in capsys.readouterr().out
    assert (out / "masks" / "0001_2.png").read_bytes() == first["masks/0001_2.png"]
    assert (out / "probs" / "0001.png").read_bytes() != first["probs/0001.png"]


def test_a_rerun_that_would_mix_outputs_is_refused(tiny_checkpoint, tmp_path, capsys):
    """Outputs of another threshold, TTA or set of weights, or outputs no manifest accounts for
    (an older camodet's, or put there by hand), would be skipped as done or sit beside this run's."""
    src, out = tmp_path / "in", tmp_path / "out"
    for seed in range(2):
        _photo(src / f"p{seed}.jpg", seed)
    predict = ["predict", str(tiny_checkpoint), str(src), "--out", str(out), "--num-workers", "0"]
    assert main(predict) == 0
    before = files_under(out)
    for extra, says in (
        (["--threshold", "0.3"], "threshold 0.5 there, 0.3 now"),
        (["--tta", "flip"], "tta 'none' there, 'flip' now"),
        (["--weights", "raw"], "weights 'ema' there, 'raw' now"),
    ):
        for skip in ([], ["--skip-existing"]):
            capsys.readouterr()
            assert main([*predict, *extra, *skip]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"holds the outputs of another model or settings ({says};" in err[0]
            assert files_under(out) == before
    (out / "masks" / "stray.png").write_bytes(before["masks/p0.png"])
    assert main([*predict, "--skip-existing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds masks/stray.png, an output that no manifest.json accounts for" in err[0]
    os.remove(out / "masks" / "stray.png")
    os.remove(out / "manifest.json")  # the folder an older camodet wrote
    assert main([*predict, "--skip-existing"]) == 2
    assert "an output that no manifest.json accounts for" in capsys.readouterr().err
