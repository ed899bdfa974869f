"""Inference images/s of the reference configuration, PyTorch against ONNX Runtime.

Target (issue 5/6): report predict throughput at 384 on the CPU for both runtimes; ONNX
Runtime should not be slower than PyTorch (it is the deployment path).
Reproduce: .venv/bin/python benchmarks/inference.py [--img-size 384 --batches 1 16 --repeats 3]
Prints a table: seconds per batch and images/s for each runtime and batch size, one run,
same random (untrained) weights and inputs; the ONNX file is exported with camodet's exporter."""

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from camodet.config import ModelConfig
from camodet.export import ProbabilityHead, export_onnx
from camodet.models import build_model


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="edgenext_base")
    p.add_argument("--num-experts", type=int, default=7)
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone=a.backbone, num_experts=a.num_experts, deep_supervision=True)
    ).eval()
    head = ProbabilityHead(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        t = time.perf_counter()
        diff = export_onnx(model, a.img_size, path)
        export_s = time.perf_counter() - t
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rows = []
        for b in a.batches:
            x = torch.randn(b, 3, a.img_size, a.img_size)
            xn = x.numpy()

            def run_torch():
                with torch.inference_mode():
                    head(x)

            pt = best_of(run_torch, a.repeats)
            ox = best_of(lambda: session.run(None, {"image": xn}), a.repeats)
            rows.append((b, pt, ox))
    print(
        f"{a.backbone}, {a.num_experts} experts, deep supervision, {a.img_size} px; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}"
    )
    print(
        f"ONNX export {export_s:.1f} s, max |ORT - PyTorch| = {diff:.1e}; best of {a.repeats} after a warm-up\n"
    )
    print("| batch | PyTorch s/batch | PyTorch img/s | ORT s/batch | ORT img/s | ORT / PyTorch speed |")
    print("|---|---|---|---|---|---|")
    for b, pt, ox in rows:
        print(f"| {b} | {pt:.3f} | {b / pt:.2f} | {ox:.3f} | {b / ox:.2f} | {pt / ox:.2f}x |")


if __name__ == "__main__":
    main()
