"""metrics.jsonl: one JSON record per epoch or event, appended as the run goes."""

import json
import os


def append(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def read(path: str) -> list[dict]:
    """Every complete record; a torn last line (a crash mid-write) is skipped."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
