"""Evaluation: the field's metrics (metrics.py), the protocol that scores a model or a folder
of saved maps per dataset (protocol.py), precision-recall / F curves (curves.py), paper
tables (paper.py), the K worst images (worst.py), image panels (panels.py) and the HTML run
report (report.py). Imports config, data, models and runs; report.py alone also loads the
run's checkpoint through serving's Predictor. Never imports the engine."""
