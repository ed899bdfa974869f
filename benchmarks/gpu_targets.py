"""Issue 6's GPU targets, checked in one run on a GPU machine, with a verdict per target.

Targets (reference configuration: edgenext_base, 7 experts, deep supervision, 384 px):
  1. memory      stage 2, batch 8, AMP + gradient checkpointing: <= 12 GB peak on the card
  2. throughput  stage-2 training in bf16 (synthetic tensors, best micro-batch): >= 300 img/s
  3. train       the same through `camodet train` (JPEG data, 16 workers, validation, guard)
  4. data        the pipeline at 16 workers, from JPEG and from --cache: faster than (2)
  5. plan        `camodet plan --gpu-memory 16GB` on CUDA: its report and three YAMLs
  6. compile     (2)'s best micro-batch with torch.compile, against eager
Reproduce on a GPU (about 10 min on an H100; split it where one call is limited to 10 min,
the second call's compile section then uses the largest micro-batch):
  python benchmarks/gpu_targets.py --out gpu.md --only memory throughput train data plan
  python benchmarks/gpu_targets.py --out gpu.md --only compile
Check the script itself on the CPU in a minute (tiny model, no verdicts):
  python benchmarks/gpu_targets.py --smoke
Each step measurement runs in a fresh process (camodet.engine.measure, as `camodet plan`),
so its memory peak is its own. Lines are printed (and appended to --out) as they come,
so a run cut short keeps what it measured."""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import torch

from camodet.data.cache import cached_samples
from camodet.data.layouts import gather
from camodet.data.synth import write_dataset
from camodet.engine.measure import measure_in_subprocess
from camodet.runs import history

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data_pipeline import rate  # noqa: E402  (a sibling script, not a package)

SECTIONS = ["memory", "throughput", "train", "data", "plan", "compile"]
MEMORY_TARGET_MB = 12 * 1024
THROUGHPUT_TARGET = 300.0


def settings(smoke: bool) -> dict:
    if smoke:
        return {
            "model": {"backbone": "edgenext_xx_small", "num_experts": 2, "deep_supervision": True},
            "img": 64,
            "memory_batch": 2,
            "batches": [2, 4],
            "steps": 1,
            "images": 12,
            "sizes": (64, 96),
            "workers": [0, 1],
            "loader_batch": 4,
            "train_workers": 1,
            "epochs": 1,
            "plan_candidates": [2],
            "device": "cpu",
            "timeout": 300,
        }
    return {
        "model": {"backbone": "edgenext_base", "num_experts": 7, "deep_supervision": True},
        "img": 384,
        "memory_batch": 8,
        "batches": [8, 16, 32, 64],
        "steps": 20,
        "images": 1024,
        "sizes": (640, 1024),
        "workers": [8, 16],
        "loader_batch": 32,
        "train_workers": 16,
        "epochs": 3,
        "plan_candidates": [4, 8, 16, 32],
        "device": "cuda",
        "timeout": 400,
    }


class Report:
    """Markdown lines to stdout and, as they come, to --out."""

    def __init__(self, path: str | None):
        self.path = path

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def precision(s: dict) -> str:
    return "AMP auto (bf16), channels_last, fused AdamW" if s["device"] == "cuda" else "fp32 on the CPU"


def verdict(ok: bool, smoke: bool) -> str:
    return "n/a (smoke)" if smoke else ("met" if ok else "NOT met")


# Results by (batch, grad checkpointing, compile): the memory section's row without checkpointing
# is the throughput section's first micro-batch, the same measurement, so it runs (a whole process,
# seconds to minutes) once.
MEASURED: dict = {}


def measure(s: dict, batch: int, grad_checkpointing=False, compile=False, fresh=False) -> dict:
    """fresh: measure again even when measured before (the compile section times whole processes)."""
    key = (batch, grad_checkpointing, compile)
    if fresh or key not in MEASURED:
        MEASURED[key] = measure_in_subprocess(
            timeout=s["timeout"],
            model_cfg=s["model"],
            img_size=s["img"],
            batch=batch,
            stage=2,
            steps=s["steps"],
            device=s["device"],
            grad_checkpointing=grad_checkpointing,
            compile=compile,
        )
    return MEASURED[key]


def row(r: dict, batch: int) -> str:
    if "error" in r:
        return f"failed: {r['error']} | | |"
    alloc = r.get("allocated_mb", r["peak_mb"])
    return f"{r['s_per_step'] * 1000:.1f} | {batch / r['s_per_step']:.1f} | {r['peak_mb']:.0f} | {alloc:.0f}"


def section_memory(s, out, smoke, found, data):
    out(f"## 1. Memory: stage 2, batch {s['memory_batch']}, {s['img']} px, {precision(s)}\n")
    out("| grad ckpt | ms/step | img/s | peak on card MB | allocator peak MB |")
    out("|---|---|---|---|---|")
    for ckpt in (False, True):
        r = measure(s, s["memory_batch"], grad_checkpointing=ckpt)
        out(f"| {'on' if ckpt else 'off'} | {row(r, s['memory_batch'])} |")
        if ckpt and "error" not in r:
            found["memory_ckpt_mb"] = r["peak_mb"]
    mb = found.get("memory_ckpt_mb", float("inf"))
    out(
        f"\nTarget <= {MEMORY_TARGET_MB} MB with gradient checkpointing: {mb:.0f} MB, "
        f"{verdict(mb <= MEMORY_TARGET_MB, smoke)}\n"
    )


def section_throughput(s, out, smoke, found, data):
    out(
        f"## 2. Throughput: stage 2 training steps, {s['img']} px, {precision(s)}, {s['steps']} timed steps\n"
    )
    out("| micro-batch | ms/step | img/s | peak on card MB | allocator peak MB |")
    out("|---|---|---|---|---|")
    best = (0.0, None)
    for batch in s["batches"]:
        r = measure(s, batch)
        out(f"| {batch} | {row(r, batch)} |")
        if "error" not in r:
            best = max(best, (batch / r["s_per_step"], batch))
    found["best_ips"], found["best_batch"] = best
    out(
        f"\nTarget >= {THROUGHPUT_TARGET:.0f} img/s: best {best[0]:.1f} img/s at micro-batch {best[1]}, "
        f"{verdict(best[0] >= THROUGHPUT_TARGET, smoke)}\n"
    )


def section_compile(s, out, smoke, found, data):
    batch = found.get("best_batch") or s["batches"][-1]
    out(f"## 6. torch.compile at micro-batch {batch} (stage 2, {precision(s)})\n")
    out("| mode | ms/step | img/s | peak on card MB | allocator peak MB | first two steps s |")
    out("|---|---|---|---|---|---|")
    rates = {}
    for compiled in (False, True):
        t = time.perf_counter()
        r = measure(s, batch, compile=compiled, fresh=True)
        total = time.perf_counter() - t
        out(f"| {'compiled' if compiled else 'eager'} | {row(r, batch)} | {total:.0f} (whole process) |")
        if "error" not in r:
            rates[compiled] = batch / r["s_per_step"]
    if len(rates) == 2:
        out(f"\ncompiled / eager throughput: {rates[True] / rates[False]:.2f}x\n")


def section_data(s, out, smoke, found, data):
    samples = gather([data["root"]], "train")
    t = time.perf_counter()
    cached = cached_samples(samples, s["img"], os.path.join(data["tmp"], "cache"), workers=os.cpu_count())
    build = time.perf_counter() - t
    out(
        f"## 4. Data pipeline: {len(samples)} JPEGs of {s['sizes'][0]}-{s['sizes'][1]} px -> {s['img']} px "
        f"augmented samples, {os.cpu_count()} cores (cache built in {build:.1f} s)\n"
    )
    out("| workers | from JPEG img/s | from cache img/s |")
    out("|---|---|---|")
    for w in s["workers"]:
        j, c = rate(samples, s["img"], w, s["loader_batch"]), rate(cached, s["img"], w, s["loader_batch"])
        out(f"| {w} | {j:.1f} | {c:.1f} |")
        found["data_jpeg"], found["data_cache"] = j, c
    need = max(found.get("best_ips", 0.0), found.get("train_ips", 0.0))
    out(
        f"\nTarget: at {s['workers'][-1]} workers faster than training ({need:.1f} img/s): JPEG "
        f"{verdict(found['data_jpeg'] > need, smoke)}, cache {verdict(found['data_cache'] > need, smoke)}\n"
    )


def camodet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camodet", *args], capture_output=True, text=True)


def model_flags(s: dict) -> list[str]:
    m = s["model"]
    return [
        "--backbone",
        m["backbone"],
        "--num-experts",
        str(m["num_experts"]),
        "--deep-supervision",
        "--img-size",
        str(s["img"]),
    ]


def section_train(s, out, smoke, found, data):
    batch = found.get("best_batch") or s["batches"][-1]
    run = os.path.join(data["tmp"], "run")
    flags = [
        "train",
        "--dataset-path",
        data["root"],
        "--checkpoint-dir",
        run,
        *model_flags(s),
        "--epochs",
        str(s["epochs"]),
        "--stage1-epochs",
        "0",
        "--batch-size",
        str(batch),
        "--num-workers",
        str(s["train_workers"]),
        "--lr",
        "0.0002",
        "--device",
        s["device"],
        "--no-tensorboard",
        "--use-ema",
    ]
    out(
        f"## 3. End to end: `camodet {' '.join(flags)}` ({len(gather([data['root']], 'train'))} images, "
        f"stage 2 throughout)\n"
    )
    t = time.perf_counter()
    p = camodet(*flags)
    if p.returncode != 0:
        out(f"failed (exit {p.returncode}): {(p.stderr.strip().splitlines() or [''])[-1][:300]}\n")
        return
    epochs = [r for r in history.read(os.path.join(run, "metrics.jsonl")) if r["type"] == "epoch"]
    out("| epoch | stage | img/s (training) | epoch s | peak MB | memory | val IoU |")
    out("|---|---|---|---|---|---|---|")
    for e in epochs:
        out(
            f"| {e['epoch']} | {e['stage']} | {e['images_per_s']:.1f} | {e['time_s']:.1f} | "
            f"{e['peak_memory_mb']:.0f} | {e['memory_kind']} | {e['val']['IoU']:.4f} |"
        )
    found["train_ips"] = epochs[-1]["images_per_s"]
    out(
        f"\nwhole command {time.perf_counter() - t:.0f} s. Target >= {THROUGHPUT_TARGET:.0f} img/s "
        f"(last epoch, workers warm): {found['train_ips']:.1f}, "
        f"{verdict(found['train_ips'] >= THROUGHPUT_TARGET, smoke)}\n"
    )


def section_plan(s, out, smoke, found, data):
    plans = os.path.join(data["tmp"], "plans")
    flags = [
        "plan",
        "--dataset-path",
        data["root"],
        *model_flags(s),
        "--device",
        s["device"],
        "--gpu-memory",
        "16GB",
        "--effective-batch",
        "32",
        "--out-dir",
        plans,
        "--candidates",
        *map(str, s["plan_candidates"]),
    ]
    out(f"## 5. `camodet {' '.join(flags)}`\n")
    p = camodet(*flags)
    out("```")
    out((p.stdout + (p.stderr if p.returncode else "")).strip())
    out("```")
    written = sorted(os.path.basename(f) for f in glob.glob(os.path.join(plans, "plan-*.yaml")))
    out(f"\nexit {p.returncode}; wrote {', '.join(written) or 'nothing'}\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        help="sections to run (default: all; with --smoke all but compile, which takes minutes on a CPU)",
    )
    p.add_argument("--out", help="also append the Markdown report to this file")
    p.add_argument(
        "--smoke", action="store_true", help="tiny model on the CPU: checks the script, no verdicts"
    )
    a = p.parse_args()
    s = settings(a.smoke)
    only = a.only or [n for n in SECTIONS if not (a.smoke and n == "compile")]
    if s["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "gpu_targets.py: no CUDA device here; run it on a GPU machine, or --smoke to check the "
            "script on the CPU"
        )
    out, found = Report(a.out), {}
    device = torch.cuda.get_device_name(0) if s["device"] == "cuda" else "CPU (smoke)"
    out(
        f"# GPU targets: {device}, torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = {"tmp": tmp, "root": os.path.join(tmp, "COD10K-v3")}
        if {"train", "data", "plan"} & set(only):
            write_dataset(
                data["root"],
                train=s["images"],
                test=1,
                seed=0,
                noncam_every=0,
                size_range=s["sizes"],
                workers=os.cpu_count(),
            )
        for name in SECTIONS:  # fixed order: data and compile compare against the throughput found before
            if name in only:
                globals()[f"section_{name}"](s, out, a.smoke, found, data)


if __name__ == "__main__":
    main()
