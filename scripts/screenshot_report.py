"""Opens a study's report.html in headless Chromium: counts broken images and takes a screenshot.

    python scripts/screenshot_report.py labelsmooth-study [--png shot.png]

Prints ``images=N broken=M`` and exits 1 if any image is broken. Needs Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
]

PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute('data-probe', `images=${images.length} broken=${broken}`);
});</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_report(report: Path, png: Path | None = None, timeout: float = 120) -> tuple[int, int]:
    """Returns (number of images, number of broken images) of ``report`` as Chromium sees it."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        probe = Path(profile) / "probe.html"
        probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
        base = [chromium, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*base, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
        if png is not None:
            subprocess.run(
                [
                    *base,
                    f"--screenshot={png.resolve()}",
                    "--window-size=1200,4000",
                    "--hide-scrollbars",
                    report.resolve().as_uri(),
                ],
                capture_output=True,
                timeout=timeout,
                check=True,
            )
    match = re.search(r'data-probe="images=(\d+) broken=(\d+)"', dom)
    if match is None:
        raise RuntimeError("the page did not finish loading in Chromium")
    return int(match.group(1)), int(match.group(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="the study's --out directory")
    parser.add_argument("--png", type=Path, help="also write a screenshot of the top of the page")
    args = parser.parse_args()
    images, broken = check_report(args.directory / "report.html", args.png)
    print(f"images={images} broken={broken}")
    return 1 if broken or not images else 0


if __name__ == "__main__":
    sys.exit(main())
