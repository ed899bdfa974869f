"""Render a run's report.html in headless Chromium and save a full-page screenshot.

Reproduce: .venv/bin/python tools/screenshot_report.py RUN_DIR [--out shot.png]
Needs Chromium (Debian: apt-get install chromium). Writes report.html first if missing."""

import argparse
import os
import shutil
import subprocess
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/report/screenshot.png)")
    p.add_argument("--width", type=int, default=1100)
    p.add_argument("--height", type=int, default=4200)
    a = p.parse_args()
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        sys.exit("no Chromium found: apt-get install chromium")
    html = os.path.abspath(os.path.join(a.run_dir, "report.html"))
    if not os.path.isfile(html):
        subprocess.run([sys.executable, "-m", "camodet", "report", a.run_dir], check=True)
    out = os.path.abspath(a.out or os.path.join(a.run_dir, "report", "screenshot.png"))
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={a.width},{a.height}",
            f"--screenshot={out}",
            f"file://{html}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
