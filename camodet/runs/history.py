"""metrics.jsonl: one JSON record per epoch or event, appended as the run goes."""

import json
import os


def append(path: str, record: dict) -> None:
    """One record on its own line. After a crash mid-write the file ends in a torn line; the
    record starts on a new line so that it is not joined to (and lost with) the torn one."""
    with open(path, "a+b") as fh:
        torn = False
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            torn = fh.read(1) != b"\n"
        fh.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())
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
