"""Tuning built on the engine, never inside it: `camodet plan` (memory_plan.py) measures the
trainer's own step and picks the micro-batch, accumulation and LR that fit a card. Imports
config, data, models and engine (its step measurement); only the CLI imports it."""
