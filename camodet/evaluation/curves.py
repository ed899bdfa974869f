"""PR, F-measure and E-measure curves per dataset, saved for plotting tools and plotted.

Files written into OUT/curves/ by `camodet evaluate ... --out OUT --curves`:

- `<row>.npz`, one per result row (dataset, and COD10K super-class rows), no pickle:
  `thresholds` (256 floats, 0/255 .. 255/255, ascending), `precision`, `recall`,
  `fmeasure` (beta^2 0.3) and `emeasure`, each 256 floats: the mean over the row's images of
  the per-image curve at threshold `thresholds[i]` (pysodmetrics, as in the table).
- `curves.npy`: the same curves in PySODEvalToolkit's layout, a pickled dict
  `{dataset: {method: {"p": [...], "r": [...], "fm": [...], "em": [...]}}}` of 256-float lists
  with index i = threshold i, read with `np.load(path, allow_pickle=True).item()`; its
  `draw_curves` plots it as it plots its own.
- `pr.png`, `fm.png`, `em.png`: one panel per dataset row.
"""

import os

import numpy as np

THRESHOLDS = np.arange(256) / 255.0
CURVE_KEYS = ("precision", "recall", "fmeasure", "emeasure")
TOOLKIT_KEYS = {"precision": "p", "recall": "r", "fmeasure": "fm", "emeasure": "em"}


def save_curves(curves: dict[str, dict[str, np.ndarray]], out_dir: str, method: str) -> list[str]:
    """curves: {row: {precision, recall, fmeasure, emeasure}} -> the files listed above
    (names relative to out_dir)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for row, c in curves.items():
        name = f"{row}.npz"
        np.savez(
            os.path.join(out_dir, name),
            thresholds=THRESHOLDS,
            **{k: np.asarray(c[k], dtype=np.float64) for k in CURVE_KEYS},
        )
        written.append(name)
    toolkit = {
        row: {method: {TOOLKIT_KEYS[k]: np.asarray(c[k]).tolist() for k in CURVE_KEYS}}
        for row, c in curves.items()
    }
    np.save(os.path.join(out_dir, "curves.npy"), toolkit, allow_pickle=True)
    return written + ["curves.npy"]


def load_curves(path: str) -> dict[str, np.ndarray]:
    """One `<row>.npz` back as {thresholds, precision, recall, fmeasure, emeasure}."""
    with np.load(path) as z:
        return {k: z[k] for k in ("thresholds", *CURVE_KEYS)}


def plot_curves(curves: dict[str, dict[str, np.ndarray]], out_dir: str, method: str) -> list[str]:
    """pr.png (precision against recall), fm.png and em.png (against the threshold), one panel
    per row; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    plots = {
        "pr.png": ("recall", "precision", "Recall", "Precision"),
        "fm.png": (None, "fmeasure", "Threshold", "F-measure"),
        "em.png": (None, "emeasure", "Threshold", "E-measure"),
    }
    written = []
    for fname, (xkey, ykey, xlabel, ylabel) in plots.items():
        n = len(curves)
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
        for ax, (row, c) in zip(axes[0], curves.items()):
            x = THRESHOLDS if xkey is None else c[xkey]
            ax.plot(x, c[ykey], color="tab:red", linewidth=2, label=method)
            ax.set(title=row, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend(loc="lower left" if ykey == "precision" else "lower center", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=120)
        plt.close(fig)
        written.append(fname)
    return written
