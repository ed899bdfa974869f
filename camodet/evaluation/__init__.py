"""Evaluation: the field's metrics (metrics.py), the protocol that scores a model or a folder
of saved maps per dataset (protocol.py), precision-recall / F curves (curves.py), paper
tables (paper.py), the K worst images (worst.py), image panels (panels.py) and the HTML run
report (report.py). Imports config, data, models and runs; report.py alone also loads the
run's checkpoint through serving's Predictor. Never imports the engine.

`camodet.evaluation` was a module before this folder existed; its names (evaluate,
format_table, SCORED, ...) still import from here, loaded from protocol.py on first use."""


def __getattr__(name):
    # the old module path `from camodet.evaluation import evaluate`, without loading the
    # protocol (torch, the datasets) for someone who only wants camodet.evaluation.metrics
    if name.startswith("__"):
        raise AttributeError(name)
    from . import protocol

    try:
        return getattr(protocol, name)
    except AttributeError:
        raise AttributeError(f"module 'camodet.evaluation' has no attribute {name!r}") from None
