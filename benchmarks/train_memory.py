"""Training-step throughput and peak memory of the reference configuration, per stage,
batch size and gradient checkpointing.

Target (issue 6): on a GPU, stage 2 at batch 8, 384 px, AMP + gradient checkpointing in
<= 12 GB peak; on the CPU the table records peak RSS (what it measures is printed).
Reproduce: .venv/bin/python benchmarks/train_memory.py [--batches 2 4 8 --img-size 384 --steps 2]
Each cell runs in a fresh process (camodet.engine.measure, as `camodet plan` does) so that
peak memory belongs to that cell alone."""

import argparse

from camodet.engine.measure import measure_in_subprocess


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="edgenext_base")
    p.add_argument("--num-experts", type=int, default=7)
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args()
    rows = []
    for stage in (1, 2):
        for batch in a.batches:
            for ckpt in (False, True):
                r = measure_in_subprocess(
                    model_cfg={
                        "backbone": a.backbone,
                        "num_experts": a.num_experts,
                        "deep_supervision": True,
                    },
                    img_size=a.img_size,
                    batch=batch,
                    stage=stage,
                    grad_checkpointing=ckpt,
                    steps=a.steps,
                )
                rows.append((stage, batch, ckpt, None if "error" in r else r, r.get("error", "")))
    first = next((r[3] for r in rows if r[3]), {})
    print(
        f"{a.backbone}, {a.num_experts} experts, deep supervision, {a.img_size} px, device {first.get('device')}, "
        f"memory measured: {first.get('memory')} (peak of the whole process), {a.steps} timed steps after 1 warm-up\n"
    )
    print("| stage | batch | grad ckpt | s/step | img/s | peak MB |")
    print("|---|---|---|---|---|---|")
    for stage, batch, ckpt, r, err in rows:
        if r is None:
            print(f"| {stage} | {batch} | {'on' if ckpt else 'off'} | failed: {err} | | |")
        else:
            print(
                f"| {stage} | {batch} | {'on' if ckpt else 'off'} | {r['s_per_step']:.3f} | {batch / r['s_per_step']:.2f} "
                f"| {r['peak_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()
