"""A screenshot of the top of an HTML page in Debian's chromium, driven by Playwright (`make docs` runs it).

    python docs/screenshot.py docs/report.html docs/report.png
"""

import os
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

page_path, png = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                args=["--no-sandbox"] if os.geteuid() == 0 else [])
    page = browser.new_page(viewport={"width": 1200, "height": 1500})
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("data:", "file:")) else r.abort())
    page.goto(page_path.as_uri(), wait_until="load")
    tmp = png.with_name(f".{png.name}.tmp.png")
    page.screenshot(path=str(tmp))
    os.replace(tmp, png)
    browser.close()
print(png)
