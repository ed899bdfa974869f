"""Training only: the Trainer and its loop (trainer.py), what ends an epoch (hooks.py),
schedules, the step, loaders, optimizer groups, the divergence guard, interruption, the
watchdog, distributed helpers and step measurement. Imports config, data, models, runs and
evaluation's metrics; only the CLI and tune/ import it."""
