import json

import torch

from camodet.cli import main
from camodet.data.normalization import IMAGENET, Normalization


def test_inspect_shows_the_input_normalisation_a_checkpoint_carries(tiny_checkpoint, tmp_path, capsys):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["normalization"] = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # e.g. an inception backbone
    torch.save(ckpt, tmp_path / "half.pth")
    assert main(["inspect", str(tmp_path / "half.pth")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("input"))
    assert line.split(None, 1)[1] == str(Normalization((0.5,) * 3, (0.5,) * 3))
    assert main(["inspect", str(tmp_path / "half.pth"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["normalization"] == ckpt["normalization"]

    del ckpt["normalization"]  # written before checkpoints carried it: trained with ImageNet's
    torch.save(ckpt, tmp_path / "older.pth")
    assert main(["inspect", str(tmp_path / "older.pth")]) == 0
    out = capsys.readouterr().out
    assert f"input        {IMAGENET} (not saved in this older checkpoint: ImageNet assumed)" in out
