"""`camodet report RUN_DIR`: one self-contained HTML page (plots embedded) built from
metrics.jsonl and config.yaml, plus the plots as PNG files. Works on a run that is still
going or that crashed: a torn last line of the history is skipped."""

import base64
import html
import io
import os

import numpy as np
import yaml

from ..config import TrainConfig
from ..errors import ConfigError
from ..runs import history
from ..runs.folder import BEST_METRIC, CONFIG, METRICS, RunFolder
from ..runs.health import new_advice

PLOTS = ("loss", "iou", "lr", "experts")
GRID_IMAGES = 8
GRID_SIDE = 192
WORST_IMAGES = 6  # the validation images with the lowest IoU, shown as a panel


def load_run(run_dir: str) -> tuple[list[dict], dict]:
    """(history records, config dict) of a run folder; empty where a file is missing."""
    folder = RunFolder(run_dir)
    records = history.read(folder.metrics)
    cfg_path = folder.config
    config = {}
    if os.path.isfile(cfg_path):
        with open(cfg_path) as fh:
            config = yaml.safe_load(fh) or {}
    return records, config


def all_advice(records: list[dict], config: dict) -> list:
    """The advice the trainer gave (or would have given) after each epoch."""
    out, upto = [], []
    for r in records:
        upto.append(r)
        if r.get("type") == "epoch":
            out += new_advice(upto, config)
    return out


def _marks(ax, records: list[dict]) -> None:
    """Stage boundaries, unfreeze milestones, warm restarts, rollbacks and interruptions."""
    styles = {
        "stage": ("tab:purple", "-", "stage {stage}"),
        "unfreeze": ("tab:gray", ":", "unfreeze"),
        "warm_restart": ("tab:blue", "--", "warm restart"),
        "rollback": ("tab:red", "--", "rollback"),
        "diverged": ("black", "-", "diverged"),
        "interrupted": ("tab:orange", "-.", "interrupted"),
    }
    labelled = set()
    for r in records:
        if r.get("type") in styles and r.get("epoch") is not None:
            colour, line, label = styles[r["type"]]
            text = label.format(**r) if "{" in label else label
            x = r["epoch"] - 0.5 if r["type"] in ("stage", "unfreeze", "warm_restart") else r["epoch"]
            ax.axvline(x, color=colour, linestyle=line, linewidth=1, label=None if text in labelled else text)
            labelled.add(text)


def best_record(epochs: list[dict]) -> dict | None:
    """The epoch record the run itself chose as best: the latest record's best_epoch (the
    trainer's rule, runs.folder.is_better), so epochs of a branch that a resume in place left
    behind do not count; None when nothing was validated."""
    chosen = epochs[-1].get("best_epoch") if epochs else None
    found = [r for r in epochs if r.get("epoch") == chosen and r.get("val")]
    return found[-1] if found else None


def make_plots(records: list[dict]) -> dict:
    """{name: PNG bytes}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r for r in records if r.get("type") == "epoch"]
    x = [r["epoch"] for r in epochs]
    out = {}

    def finish(fig, ax, name, ylabel):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        _marks(ax, records)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[name] = buf.getvalue()

    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(x, [r.get("loss") for r in epochs], marker="o", ms=3, label="loss (total)")
    for k in sorted({k for r in epochs for k in r if k.startswith("loss_")}):
        ax.plot(x, [r.get(k) for r in epochs], linewidth=1, alpha=0.7, label=k)
    finish(fig, ax, "loss", "training loss")

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for k in ("IoU", "Dice", "Sm"):
        ax.plot(x, [(r.get("val") or {}).get(k) for r in epochs], marker="o", ms=3, label=f"val {k}")
    best = best_record(epochs)
    if best:
        ax.scatter(
            [best["epoch"]],
            [best["val"].get(BEST_METRIC)],
            s=80,
            facecolors="none",
            edgecolors="green",
            label="best",
        )
    finish(fig, ax, "iou", "validation")

    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(x, [r.get("lr") for r in epochs], marker="o", ms=3, label="LR (decoder, end of epoch)")
    if any(r.get("lr") for r in epochs):
        ax.set_yscale("log")
    finish(fig, ax, "lr", "learning rate")

    # one expert per block routes everything to it: a flat line at 1 says nothing, so no plot
    if max((len(b) for r in epochs for b in r.get("expert_usage") or []), default=0) < 2:
        return out
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for block in range(max((len(r.get("expert_usage") or []) for r in epochs), default=0)):
        n = len(epochs[-1]["expert_usage"][block])
        for e in range(n):
            ys = [
                r["expert_usage"][block][e] if len(r.get("expert_usage") or []) > block else None
                for r in epochs
            ]
            ax.plot(
                x, ys, linestyle="-" if block == 0 else "--", linewidth=1, label=f"block {block} expert {e}"
            )
    finish(fig, ax, "experts", "routing share")
    return out


def prediction_grid(run_dir: str, config: dict, load_predictor) -> tuple[bytes | None, bytes | None, str]:
    """Input | ground truth | prediction for the first validation images, and for the
    WORST_IMAGES with the lowest IoU of all of them, from the best (else last) checkpoint, loaded
    by `load_predictor(path)` (serving's Predictor.load; evaluation sits below serving, so the
    caller hands it in); (grid PNG or None, worst PNG or None, a note)."""
    ckpt = RunFolder(run_dir).newest_weights()
    if ckpt is None:
        return None, None, "no checkpoint yet, so no predictions"
    try:
        from ..data.io import DataError
        from ..data.splits import split_train_val, training_samples
        from ..runs.checkpoint import CheckpointError

        cfg = TrainConfig.from_dict(config)
        _, val = split_train_val(
            training_samples(cfg.data, skip_bad_files=True), cfg.data.val_fraction, cfg.run.seed
        )
        if not val:
            return None, None, "the run has no validation images"
        rows, worst = _score_validation(load_predictor(ckpt), val)
        if not rows:
            return None, None, "no readable validation image"
        return (
            _png(np.concatenate(rows, 0)),
            _png(worst.panel(GRID_SIDE)),
            f"{os.path.basename(ckpt)} on {len(rows)} validation images: input | GT | prediction",
        )
    except (ConfigError, DataError, CheckpointError, OSError) as e:
        return None, None, f"no predictions: {e}"


def _score_validation(predictor, val: list) -> tuple[list, object]:
    """Every readable validation image predicted at its own size and scored (IoU at 0.5, as
    validation does): the first GRID_IMAGES as grid rows, and the worst ones."""
    from ..data.io import DataError, read_image, read_mask
    from .metrics import binarise_gt, iou_dice, to_uint8
    from .panels import triptych
    from .worst import WorstImages

    rows, worst = [], WorstImages(WORST_IMAGES)
    for s in val:
        try:
            img, gt = read_image(s.image), read_mask(s.mask)
        except DataError:  # as validation did under --skip-bad-files: skipped
            continue
        prob = predictor.predict(img)
        if len(rows) < GRID_IMAGES:
            rows.append(triptych(img, gt, prob, GRID_SIDE))
        pred = to_uint8(prob)
        worst.offer(iou_dice(pred >= 128, binarise_gt(gt) > 0)[0], "validation", s, pred)
    return rows, worst


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def time_table(epochs: list[dict]) -> str:
    """The training pass against steps x its median step (what the loop adds beyond its
    steps: data waits, warm-up, logging), data-loader waits and validation, per epoch."""
    rows = [r for r in epochs if "train_time_s" in r]
    if not rows:
        return ""
    head = (
        "epoch",
        "stage",
        "workers",
        "steps",
        "training pass s",
        "steps x median step s",
        "pass / (steps x step)",
        "waiting for data s",
        "validation s",
    )
    body = []
    for r in rows:
        ideal = r["steps"] * r["step_time_s"] if r.get("steps") else None
        cells = (
            r["epoch"],
            r.get("stage"),
            r.get("num_workers"),
            r.get("steps"),
            f"{r['train_time_s']:.1f}",
            f"{ideal:.1f}" if ideal else "-",
            f"{r['loop_ratio']:.2f}" if r.get("loop_ratio") else "-",
            f"{r.get('data_wait_s', 0):.1f}",
            f"{r['val_time_s']:.1f}" if "val_time_s" in r else "-",
        )
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(body) + "</table>"


def write_report(run_dir: str, load_predictor=None) -> str:
    """Writes RUN_DIR/report.html and RUN_DIR/report/*.png; returns the HTML path. With
    `load_predictor` (checkpoint path -> Predictor), also the validation predictions."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir}: no such run folder")
    records, config = load_run(run_dir)
    if not records and not config:
        raise ConfigError(f"{run_dir}: no {METRICS} or {CONFIG}; is this a camodet run folder?")
    epochs = [r for r in records if r.get("type") == "epoch"]
    plots = make_plots(records) if epochs else {}
    png_dir = RunFolder(run_dir).report_dir
    os.makedirs(png_dir, exist_ok=True)
    for name, png in plots.items():
        with open(os.path.join(png_dir, f"{name}.png"), "wb") as fh:
            fh.write(png)
    grid, worst, grid_note = (
        prediction_grid(run_dir, config, load_predictor)
        if load_predictor
        else (None, None, "predictions not requested")
    )
    for name, png in (("predictions", grid), ("worst", worst)):
        if png:
            with open(os.path.join(png_dir, f"{name}.png"), "wb") as fh:
                fh.write(png)

    total = config.get("stages", {}).get("epochs", "?")
    last = epochs[-1] if epochs else {}
    ended = [r for r in records if r.get("type") in ("diverged", "interrupted")]
    status = (
        f"{ended[-1]['type']} at epoch {ended[-1].get('epoch')}"
        if ended and ended[-1] is records[-1]
        else f"epoch {last.get('epoch', 0)} of {total}"
    )
    best = best_record(epochs)
    esc = html.escape
    parts = [
        f"<h1>camodet run: {esc(os.path.abspath(run_dir))}</h1>",
        f"<p class=status>{esc(status)}; {len(epochs)} epoch record(s)</p>",
    ]
    if best and best.get("val"):
        cells = "".join(
            f"<tr><th>{esc(k)}</th><td>{v:.4f}</td></tr>"
            if isinstance(v, float)
            else f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>"
            for k, v in best["val"].items()
        )
        parts.append(
            f"<h2>Best epoch: {best['epoch']} (stage {best.get('stage')})</h2><table>{cells}</table>"
        )
    advice = all_advice(records, config)
    parts.append(
        "<h2>Health advice</h2>"
        + (
            "<ul>"
            + "".join(f"<li><b>epoch {a.epoch}</b> [{esc(a.rule)}]: {esc(a.message)}</li>" for a in advice)
            + "</ul>"
            if advice
            else "<p>No warnings: the run looks healthy.</p>"
        )
    )
    titles = {
        "loss": "Training loss",
        "iou": "Validation metrics",
        "lr": "Learning rate",
        "experts": "Expert usage per MoE block",
    }
    for name in PLOTS:
        if name in plots:
            parts.append(f"<h2>{titles[name]}</h2>{_img(plots[name], name)}")
    timing = time_table(epochs)
    if timing:
        parts.append("<h2>Time per epoch</h2>" + timing)
    parts.append(
        "<h2>Validation predictions</h2>"
        + (_img(grid, "predictions") if grid else "")
        + f"<p>{esc(grid_note)}</p>"
    )
    if worst:
        parts.append(
            f"<h2>Where it fails: the {WORST_IMAGES} validation images with the lowest IoU</h2>"
            + _img(worst, "worst validation images")
        )
    events = [r for r in records if r.get("type") != "epoch"]
    if events:
        parts.append(
            "<h2>Events</h2><ul>"
            + "".join(
                f"<li>{esc(r['type'])} at epoch {r.get('epoch')}: "
                f"{esc(', '.join(f'{k}={v}' for k, v in r.items() if k not in ('type', 'epoch')))}</li>"
                for r in events
            )
            + "</ul>"
        )
    parts.append(f"<h2>Configuration</h2><pre>{esc(yaml.safe_dump(config, sort_keys=False))}</pre>")
    page = (
        "<!doctype html><html><head><meta charset=utf-8><title>camodet report</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}pre{background:#f6f6f6;padding:1em}"
        ".status{font-size:1.1em}</style></head><body>" + "\n".join(parts) + "</body></html>"
    )
    path = RunFolder(run_dir).report
    with open(path, "w") as fh:
        fh.write(page)
    return path
