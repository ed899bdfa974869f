"""Training only: the Trainer and its loop (trainer.py), what ends an epoch (hooks.py),
schedules, the step, loaders, optimizer groups, the divergence guard, interruption, the
watchdog, distributed helpers, step measurement and `camodet plan` (memory_plan.py). Imports
config, data, models, runs and evaluation's metrics; nothing outside training imports it."""
