"""`camodet sweep --summary`: the trials table, the best trial's `train` command, and an HTML page
with Optuna's own optimisation-history and parameter-importance plots (its matplotlib backend:
plotly's image export needs kaleido and a browser, which an offline machine may not have)."""

import base64
import datetime
import html
import io
import math

from .commands import train_command
from .study import COMMAND_ATTR, RUN_DIR, SETTINGS


def trial_rows(study) -> list[dict]:
    """One row per trial: number, state, best IoU, epochs, minutes, settings, run folder."""
    rows = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False):
        start, end = t.datetime_start, t.datetime_complete or (now if t.datetime_start else None)
        scores = list(t.intermediate_values.values())
        best = t.value if t.value is not None else (max(scores) if scores else math.nan)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "best_iou": best,
                "epochs": t.user_attrs.get("epochs", max(t.intermediate_values, default=0)),
                "minutes": (end - start).total_seconds() / 60 if start else math.nan,
                "settings": t.user_attrs.get(SETTINGS) or t.params,
                "run_dir": t.user_attrs.get(RUN_DIR, ""),
            }
        )
    return rows


def format_value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_table(rows: list[dict]) -> str:
    """The trials as a text table, the settings in the last column."""
    lines = [f"{'trial':>5}  {'state':<8} {'best IoU':>8} {'epochs':>6} {'min':>6}  settings"]
    for r in rows:
        settings = ", ".join(f"{k}={format_value(v)}" for k, v in r["settings"].items())
        iou = f"{r['best_iou']:.4f}" if math.isfinite(r["best_iou"]) else "-"
        lines.append(
            f"{r['trial']:>5}  {r['state']:<8} {iou:>8} {r['epochs']:>6} {r['minutes']:>6.1f}  {settings}"
        )
    return "\n".join(lines)


def best_command(study, program: list[str]) -> str | None:
    """The `train` command of the best complete trial, into a new folder; None before one finished."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    flags = list(study.user_attrs.get(COMMAND_ATTR, []))
    settings = {
        **(best.user_attrs.get(SETTINGS) or {}),
        "run.checkpoint_dir": f"runs/{study.study_name}-best",
    }
    return train_command(program, flags, settings)


def figure_png(plot, study) -> tuple[str | None, str]:
    """(base64 PNG, "") of one of optuna.visualization.matplotlib's plots, or (None, why) where
    Optuna cannot draw it yet (e.g. importance before two complete trials)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = plot(study)
    except Exception as e:  # Optuna refuses some plots on small studies; the page says so
        return None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
    fig.set_size_inches(7, 4.2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode(), ""


def write_html(study, rows: list[dict], command: str | None, path: str) -> None:
    """One self-contained page: the table, the command, the history and importance plots."""
    from optuna.visualization import matplotlib as ovm

    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(x)}</td>"
            for x in (
                str(r["trial"]),
                r["state"],
                f"{r['best_iou']:.4f}" if math.isfinite(r["best_iou"]) else "-",
                str(r["epochs"]),
                f"{r['minutes']:.1f}",
                ", ".join(f"{k}={format_value(v)}" for k, v in r["settings"].items()),
            )
        )
        + "</tr>"
        for r in rows
    )
    figures = ""
    for title, plot in (
        ("Optimisation history", ovm.plot_optimization_history),
        ("Parameter importance", ovm.plot_param_importances),
        ("Validation IoU per epoch", ovm.plot_intermediate_values),
    ):
        png, why = figure_png(plot, study)
        body = (
            f'<img src="data:image/png;base64,{png}" alt="{title}">'
            if png
            else f"<p>not drawn: {html.escape(why)}</p>"
        )
        figures += f"<h2>{title}</h2>{body}"
    page = (
        f"<!doctype html><meta charset='utf-8'><title>sweep {html.escape(study.study_name)}</title>"
        f"<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:left}}</style>"
        f"<h1>Sweep {html.escape(study.study_name)}</h1>"
        f"<table><tr><th>trial</th><th>state</th><th>best IoU</th><th>epochs</th><th>min</th>"
        f"<th>settings</th></tr>{cells}</table>"
        f"<h2>Best trial's command</h2><pre>{html.escape(command or 'no trial has finished yet')}</pre>"
        f"{figures}"
    )
    with open(path, "w") as fh:
        fh.write(page)


def summary_command(storage: str, study_name: str, out_dir: str, program: list[str]) -> int:
    """`camodet sweep --summary`: the trials table and the best trial's command printed, and
    OUT/summary.html written."""
    import os

    from .study import load_study

    study = load_study(storage, study_name)
    rows = trial_rows(study)
    command = best_command(study, program)
    print(format_table(rows))
    print(f"best trial's command:\n  {command}" if command else "no trial has finished yet")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "summary.html")
    write_html(study, rows, command, path)
    print(f"wrote {path} (history and importance plots); live view: optuna-dashboard {storage}")
    return 0
