"""TensorBoard logging (rank 0): step scalars every --log-every steps, epoch scalars,
expert usage per MoE block, and a panel of fixed validation images every few epochs."""

import logging
import resource

import numpy as np
import torch

from ..evaluation.panels import triptych

log = logging.getLogger("camodet")
PANEL_IMAGES = 4


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(peak MB, what was measured): CUDA allocator peak on a GPU, process peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"  # Linux reports KiB


class TensorBoard:
    """TensorBoard writer of rank 0 (a no-op when off or not installed)."""

    def __init__(self, enabled: bool, log_dir: str, purge_step: int | None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning(
                "TensorBoard logging is off: the tensorboard package is not installed "
                "(pip install tensorboard, or pass --no-tensorboard to silence this)"
            )
            return
        # purge_step drops events a previous attempt wrote past the point this run resumes from
        self.writer = SummaryWriter(log_dir, purge_step=purge_step)

    def step(self, global_step: int, loss: float, grad_norm: float, optimizer) -> None:
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss_step", loss, global_step)
        self.writer.add_scalar("train/grad_norm", grad_norm, global_step)
        seen = set()
        for pg in optimizer.param_groups:
            g = pg["backbone_group"]
            if g not in seen:
                seen.add(g)
                self.writer.add_scalar(
                    f"lr/{'decoder' if g < 0 else f'backbone_group{g}'}", pg["lr"], global_step
                )

    def epoch(self, epoch: int, record: dict) -> None:
        """Epoch scalars: losses, LR, validation metrics, timing and expert usage per block."""
        if self.writer is None:
            return
        w = self.writer
        for k, v in record.items():
            if k.startswith("loss") and isinstance(v, (int, float)):
                w.add_scalar(f"train/{k}", v, epoch)
        for k in (
            "images_per_s",
            "skipped_steps",
            "overflow_steps",
            "grad_norm",
            "peak_memory_mb",
            "lr_scale",
        ):
            if isinstance(record.get(k), (int, float)):
                w.add_scalar(f"train/{k}", record[k], epoch)
        for k, v in (record.get("val") or {}).items():
            w.add_scalar(f"val/{k}", v, epoch)
        for block, usage in enumerate(record.get("expert_usage") or []):
            for i, u in enumerate(usage):  # add_scalars would make one event folder per expert
                w.add_scalar(f"experts/block{block}_expert{i}", u, epoch)
        w.flush()

    @torch.no_grad()
    def panel(self, epoch: int, model, val_set, device) -> None:
        """Input | ground truth | prediction for the first validation images, at training size."""
        if self.writer is None or len(val_set) == 0:
            return
        rows = []
        for i in range(min(PANEL_IMAGES, len(val_set))):
            item = val_set[i]
            prob = torch.sigmoid(model(item["image"][None].to(device)).logits.float())[0, 0].cpu().numpy()
            rgb = val_set.norm.undo(item["image"].numpy())  # the statistics the set normalised with
            rows.append(triptych(rgb, item["gt"], prob, prob.shape[0]))
        self.writer.add_image("val/input_gt_prediction", np.concatenate(rows, 0), epoch, dataformats="HWC")
        self.writer.flush()

    def __enter__(self) -> "TensorBoard":
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
