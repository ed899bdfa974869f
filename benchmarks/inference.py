"""Inference images/s of the reference configuration, PyTorch against ONNX Runtime.

Target (issue 5/6): report predict throughput at 384 on the CPU for both runtimes; ONNX
Runtime should not be slower than PyTorch (it is the deployment path). Issue 19: the graph
takes any height and width (multiples of 32), so a non-square input is timed too, and
`--fp16` adds the half-precision graph (meant for GPUs; on a CPU it shows what ORT's CPU
provider makes of it, which is not its purpose).
Reproduce: .venv/bin/python benchmarks/inference.py [--img-size 384 --sizes 384x384 384x512
--batches 1 4 --repeats 3 --fp16]
Prints a table: seconds per batch and images/s for each runtime, input size and batch size,
one run, same random (untrained) weights and inputs; ONNX files come from camodet's exporter."""

import argparse
import os
import platform
import tempfile
import time

import torch

from camodet.config import ModelConfig
from camodet.models import build_model
from camodet.serving.export import ProbabilityHead, export_onnx, export_onnx_fp16


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def size_of(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="edgenext_base")
    p.add_argument("--num-experts", type=int, default=7)
    p.add_argument("--img-size", type=int, default=384, help="the size the model is exported and checked at")
    p.add_argument("--sizes", nargs="+", default=["384x384", "384x512"], help="HxW inputs to time")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fp16", action="store_true", help="also time model_fp16.onnx")
    a = p.parse_args()
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=a.backbone, num_experts=a.num_experts, deep_supervision=True)
    model = build_model(cfg).eval()
    head = ProbabilityHead(model).eval()
    gpu = (
        "GPU: not measured (no CUDA device on this machine)"
        if not torch.cuda.is_available()
        else "GPU: present but not timed by this script (CPU numbers only)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        graphs, notes = {}, []
        for name, fp16 in (("ORT", False), ("ORT fp16", True))[: 2 if a.fp16 else 1]:
            path = os.path.join(tmp, f"{name}.onnx")
            t = time.perf_counter()
            if fp16:  # converted from the fp32 graph, as `camodet export --fp16` does
                diff = export_onnx_fp16(model, a.img_size, os.path.join(tmp, "ORT.onnx"), path)
            else:
                diff = export_onnx(model, a.img_size, path)
            notes.append(
                f"{name}: export {time.perf_counter() - t:.1f} s, max |ORT - PyTorch fp32| = {diff:.1e}"
            )
            graphs[name] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rows = []
        for size in a.sizes:
            h, w = size_of(size)
            for b in a.batches:
                x = torch.randn(b, 3, h, w)
                xn = x.numpy()

                def run_torch(x=x):
                    with torch.inference_mode():
                        head(x)

                times = {"PyTorch": best_of(run_torch, a.repeats)}
                for name, session in graphs.items():
                    times[name] = best_of(lambda s=session, xn=xn: s.run(None, {"image": xn}), a.repeats)
                rows.append((f"{h}x{w}", b, times))
    print(
        f"{a.backbone}, {a.num_experts} experts, deep supervision, exported at {a.img_size} px; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__} (CPUExecutionProvider); {gpu}"
    )
    print("; ".join(notes) + f"; best of {a.repeats} after a warm-up\n")
    names = list(rows[0][2])
    print(
        "| input | batch | "
        + " | ".join(f"{n} s/batch | {n} img/s" for n in names)
        + " | "
        + " | ".join(f"{n} / PyTorch speed" for n in names[1:])
        + " |"
    )
    print("|---|---|" + "---|---|" * len(names) + "---|" * (len(names) - 1))
    for size, b, t in rows:
        print(
            f"| {size} | {b} | "
            + " | ".join(f"{t[n]:.3f} | {b / t[n]:.2f}" for n in names)
            + " | "
            + " | ".join(f"{t['PyTorch'] / t[n]:.2f}x" for n in names[1:])
            + " |"
        )


if __name__ == "__main__":
    main()
