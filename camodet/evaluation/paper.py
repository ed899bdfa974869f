"""Results in the form papers print them: COD10K's super-class rows, the opt-in per-map
min-max normalisation, and the LaTeX table (S-alpha, weighted F, mean E, MAE; 3 decimals)."""

import re

import numpy as np

from .metrics import Evaluator, score_image

# COD10K's five super-classes, in the order the COD10K paper (Fan et al., CVPR 2020) lists them.
SUPER_CLASSES = ("Aquatic", "Terrestrial", "Flying", "Amphibian", "Other")
_SUPER = re.compile(r"-CAM-\d+-([A-Za-z]+)-")

# (column, LaTeX header) in the field's usual order; the arrow says which way is better.
PAPER_COLUMNS = (
    ("Sm", r"$S_\alpha\uparrow$"),
    ("wFm", r"$F^w_\beta\uparrow$"),
    ("meanEm", r"$E^m_\phi\uparrow$"),
    ("MAE", r"$\mathcal{M}\downarrow$"),
)


def super_class(name: str) -> str | None:
    """'COD10K-CAM-1-Aquatic-3-Crab-32' -> 'Aquatic'; None for NonCAM or other names (and for
    a super-class outside the five, e.g. the synthetic generator's, so no row is invented)."""
    m = _SUPER.search(name)
    return m.group(1) if m and m.group(1) in SUPER_CLASSES else None


def minmax(pred: np.ndarray) -> np.ndarray:
    """Per-map min-max normalisation of an 8-bit map (a constant map is left as it is)."""
    lo, hi = int(pred.min()), int(pred.max())
    if hi == lo:
        return pred
    return np.rint((pred.astype(np.float32) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def scaling_note(normalise: bool) -> str:
    """One sentence for the table's legend: which maps the numbers were computed on."""
    if normalise:
        return (
            "maps: min-max normalised per map (--minmax) before every metric, "
            "IoU and Dice (at 0.5) and the curves included"
        )
    # pysodmetrics' step() rescales each map to its own min..max (MATLAB's mapminmax, as the
    # field's toolboxes do); only the columns camodet computes itself see the raw map.
    return (
        "maps: as predicted; pysodmetrics (Sm, wFm, E-, F-measure, MAE) rescales each map to its "
        "min..max as the field's toolboxes do, IoU and Dice threshold the raw probability at 0.5"
    )


def score_sample(pred: np.ndarray, gt: np.ndarray, sample: str, normalise: bool = False) -> dict:
    """One image's metric state (metrics.score_image), after the min-max normalisation when asked."""
    return score_image(minmax(pred) if normalise else pred, gt, sample)


class DatasetScorer:
    """One dataset's Evaluator, plus one per COD10K super-class found in its file names;
    `normalise` applies the per-map min-max normalisation before scoring."""

    def __init__(self, name: str, normalise: bool = False):
        self.name, self.normalise = name, normalise
        self.all = Evaluator(full=True)
        self.by_class: dict[str, Evaluator] = {}

    def step(self, pred: np.ndarray, gt: np.ndarray, sample: str) -> dict:
        """pred: uint8 map at the GT's size; gt: uint8 grey levels; sample: the file stem.
        Returns the image's own scores (IoU, Dice, Sm, MAE)."""
        return self.add(score_sample(pred, gt, sample, self.normalise), sample)

    def add(self, state: dict, sample: str) -> dict:
        """Count an image scored by score_sample (here or in another process); returns its
        own scores. Its super-class row gets the same entries: scoring it twice would give them."""
        self.all.extend(state)
        cls = super_class(sample)
        if cls:
            self.by_class.setdefault(cls, Evaluator(full=True)).extend(state)
        return state["records"][0]

    def rows(self) -> dict[str, Evaluator]:
        """{row name: evaluator}: the dataset, then 'COD10K-Aquatic', ... in the paper's order."""
        out = {self.name: self.all}
        for cls in SUPER_CLASSES:
            if cls in self.by_class:
                out[f"{self.name}-{cls}"] = self.by_class[cls]
        return out


def format_latex(results: dict, method: str = "camodet", note: str = "") -> str:
    """A booktabs table: one row for the method, a group of four columns per dataset; COD10K's
    super-classes, when present, in a second table of the same form."""
    main = {k: v for k, v in results.items() if not is_super_row(k)}
    supers = {k: v for k, v in results.items() if is_super_row(k)}
    parts = [_latex_table(main, method, "Results on the test sets", note)]
    if supers:
        parts.append(_latex_table(supers, method, "COD10K results per super-class", note))
    return "\n\n".join(parts)


def is_super_row(name: str) -> bool:
    """Whether a result row is a COD10K super-class ('COD10K-Aquatic') rather than a dataset."""
    return any(name.endswith("-" + c) for c in SUPER_CLASSES)


def _latex_table(rows: dict, method: str, title: str, note: str) -> str:
    n = len(PAPER_COLUMNS)
    spec = "l" + "".join("|" + "c" * n for _ in rows)
    groups = " & ".join(
        rf"\multicolumn{{{n}}}{{c{'|' if i < len(rows) - 1 else ''}}}"
        rf"{{{_tex(name)} ({r['images']})}}"
        for i, (name, r) in enumerate(rows.items())
    )
    heads = " & ".join(h for _ in rows for _, h in PAPER_COLUMNS)
    values = " & ".join(f"{r[c]:.3f}" for r in rows.values() for c, _ in PAPER_COLUMNS)
    caption = (
        rf"{title}: S-measure $S_\alpha$ ($\alpha$ 0.5), weighted F-measure $F^w_\beta$, "
        rf"mean E-measure $E^m_\phi$, mean absolute error $\mathcal{{M}}$; "
        rf"numbers in brackets are images. {_tex(note.rstrip('.'))}."
    )
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{caption}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            rf" & {groups} \\",
            rf"Method & {heads} \\",
            r"\midrule",
            rf"{_tex(method)} & {values} \\",
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
        ]
    )


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    """Escape the characters LaTeX treats specially in plain text (names, the legend)."""
    return "".join(_TEX.get(ch, ch) for ch in text).replace("--", "-{}-")
