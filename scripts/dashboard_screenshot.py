"""Regenerate docs/dashboard.png: run `llamahome cache serve --demo`, let it work, photograph the page.

    python scripts/dashboard_screenshot.py [--seconds 40] [--out docs/dashboard.png] [--width 1280 --height 1260]

Needs Chromium (`apt-get install chromium`). Everything runs on loopback in a temporary directory.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the demo runs before the photo")
    parser.add_argument("--out", default="docs/dashboard.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1260)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("Chromium is not installed (apt-get install chromium).", file=sys.stderr)
        return 1
    server = subprocess.Popen(
        [sys.executable, "-m", "llamahome", "cache", "serve", "--demo", "--port", "0", "--refresh", "1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" at ", 1)[1].strip()
        print(f"demo dashboard at {url}; waiting {args.seconds:g} s")
        time.sleep(args.seconds)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
                 "--virtual-time-budget=3000", f"--screenshot={args.out}", url],
                check=True, capture_output=True, timeout=180,
            )  # fmt: skip
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
