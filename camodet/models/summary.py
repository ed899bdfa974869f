"""Parameter counts by part and FLOPs of one forward pass."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from .decoders import describe_decoder
from .detector import CamoDetector


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def summarise(model: CamoDetector, img_size: int) -> dict:
    """Parameters by part (backbone, decoder; the moe decoder's experts and routers apart) and
    GFLOPs of one forward pass at `img_size`."""
    blocks = list(getattr(model.decoder, "moe", {}).values())
    experts = sum(count(b.experts) for b in blocks)
    routers = sum(count(b.router) for b in blocks)
    parts = {"backbone": count(model.backbone), "decoder": count(model.decoder) - experts - routers}
    if blocks:
        parts["experts"], parts["routers"] = experts, routers
    parts["total"] = sum(parts.values())
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, img_size, img_size)
    with torch.no_grad():
        with FlopCounterMode(display=False) as full:
            model(x)
        with FlopCounterMode(display=False) as bare:
            model.backbone(x)
    model.train(was_training)
    return {
        "params": parts,
        "gflops": full.get_total_flops() / 1e9,
        "backbone_gflops": bare.get_total_flops() / 1e9,
        "img_size": img_size,
        "decoder": model.cfg.decoder,
        "decoder_words": describe_decoder(model.cfg),
        "moe_blocks": len(blocks),
        "num_experts": model.cfg.num_experts if blocks else 0,
    }


def format_summary(s: dict, backbone: str) -> str:
    experts = f", {s['num_experts']} experts x {s['moe_blocks']} MoE blocks" if s["moe_blocks"] else ""
    lines = [
        f"camodet model: {backbone}, --decoder {s['decoder']} ({s['decoder_words']}){experts}, "
        f"input {s['img_size']}x{s['img_size']}"
    ]
    for k, v in s["params"].items():
        lines.append(f"  {k:<28}{v / 1e6:>9.2f} M params")
    lines.append(
        f"  {'GFLOPs (1 image, 2 x MACs)':<28}{s['gflops']:>9.2f}  "
        f"(backbone alone {s['backbone_gflops']:.2f})"
    )
    return "\n".join(lines)
