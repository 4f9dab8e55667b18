#!/usr/bin/env python3
"""Look at the overview dashboard as a new user would: headless Chromium takes a screenshot
and the rendered page is checked for a drawn chart in every Vega-Lite panel and for the
account cards with their window bars.

    .venv/bin/python scripts/screenshot_dashboard.py [URL] [--out dashboard.png]

URL defaults to http://127.0.0.1:8001/-/dashboards/overview (start ``./scripts/run --demo``
first). Needs Chromium (Debian: ``apt-get install chromium``). Exit status 1 when a chart,
the account cards or their bars did not render. ``--dom FILE`` keeps the rendered HTML.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=15000"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("Chromium not found (Debian: apt-get install chromium)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:8001/-/dashboards/overview")
    parser.add_argument("--out", default="dashboard.png")
    parser.add_argument("--size", default="1600,1500")
    parser.add_argument("--dom", help="also save the rendered page's HTML to this file")
    args = parser.parse_args()
    browser = chromium()
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}"]
        subprocess.run([*common, f"--screenshot={args.out}", args.url], check=True,
                       capture_output=True, timeout=120)
        dom = subprocess.run([*common, "--dump-dom", args.url], check=True, capture_output=True,
                             text=True, timeout=120).stdout
    if args.dom:
        Path(args.dom).write_text(dom)
    meta = yaml.safe_load((ROOT / "datasette-metadata.yml").read_text())
    charts = meta["plugins"]["datasette-dashboards"]["overview"]["charts"]
    vega = [c for c, spec in charts.items() if spec.get("library") == "vega-lite"]
    drawn = len(re.findall(r'<canvas|<svg[^>]*class="marks"', dom))
    errors = re.findall(r"(?i)error[^<]{0,120}", dom)
    cards = len(re.findall(r'class="mf-card ', dom))
    bars = len(re.findall(r'class="mf-bar-fill ', dom))
    print(f"screenshot: {args.out}; vega-lite charts configured: {len(vega)}, drawn: {drawn}; "
          f"account cards: {cards}, window bars: {bars}")
    if drawn < len(vega):
        print("some charts did not render:", *errors[:5], sep="\n  ")
        return 1
    if not cards or not bars:
        print("the account cards or their window bars did not render")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
