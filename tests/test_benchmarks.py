"""The GPU-target script is run only when a session has a GPU; its --smoke mode keeps it
working in between (every section, tiny model, CPU)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_targets_smoke_runs_every_section(tmp_path):
    report = tmp_path / "gpu.md"
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_targets.py"), "--smoke", "--out", str(report)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    text = report.read_text()
    for header in (
        "## 1. Memory",
        "## 2. Throughput",
        "## 3. End to end",
        "## 4. Data pipeline",
        "## 5. `camodet plan",
    ):
        assert header in text
    assert "failed" not in text and "NOT met" not in text
    # every measured rate is a real one (a loader that yields nothing printed 0.0 once)
    rows = re.findall(r"^\| \d+ \| ([\d.]+) \| ([\d.]+) \|$", text, re.M)
    rates = [float(r) for pair in rows for r in pair]
    assert len(rates) == 4 and min(rates) > 0
    assert "wrote plan-balanced.yaml, plan-conservative.yaml, plan-fast.yaml" in text
    assert re.search(r"\| 1 \| 2 \| [\d.]+ \| [\d.]+ \| \d+ \| cpu_rss \| 0\.\d{4} \|", text)
