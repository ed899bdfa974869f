"""The run folder and what is in it: file names, the checkpoint format, the resume
decision, the metrics history and the advice read from it. Used by training, inference,
inspection and the report alike; imports nothing from the engine."""
