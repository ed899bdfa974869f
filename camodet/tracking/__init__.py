"""Tracking: the run's config, epoch records, events and final artefacts sent to experiment
trackers (W&B, MLflow) as they already appear in metrics.jsonl. A trainer hook on rank 0; a
tracker that cannot start is one warning and the run goes on. Imports config and runs; its
artefacts (the export, the HTML report) come from serving and evaluation, lazily, at the end."""
