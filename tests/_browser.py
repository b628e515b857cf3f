"""Open a report in headless Chromium and read back what a reader's browser saw.

No browser-driver package: the page is copied with a small probe script injected at the top
of ``<head>`` (it records console errors and uncaught exceptions) and at the end of ``<body>``
(after load it checks every image and every in-page link and writes a JSON verdict into the
DOM); ``chromium --dump-dom`` prints the DOM after the page's scripts ran, and
``chromium --screenshot`` takes the full page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_HEAD_PROBE = """<script>
window.__errors = [];
(function () {
  var orig = console.error;
  console.error = function () { window.__errors.push(Array.from(arguments).join(' ')); orig.apply(console, arguments); };
  window.addEventListener('error', function (e) { window.__errors.push('uncaught: ' + (e.message || e.type)); }, true);
})();
</script>"""

_BODY_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images).map(function (im) {
    return {alt: im.alt, complete: im.complete, width: im.naturalWidth, height: im.naturalHeight};
  });
  var links = Array.from(document.querySelectorAll('a[href^="#"]')).map(function (a) {
    var id = decodeURIComponent(a.getAttribute('href').slice(1));
    return {href: a.getAttribute('href'), resolves: document.getElementById(id) !== null};
  });
  var wide = Array.from(document.querySelectorAll('table')).filter(function (t) {
    var wrap = t.parentElement;
    return !(wrap && wrap.classList.contains('table-wrap'));
  }).length;
  var out = document.createElement('pre');
  out.id = '__probe';
  out.textContent = JSON.stringify({errors: window.__errors, images: imgs, links: links,
                                    unwrapped_tables: wide, height: document.body.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _flags(tmp: Path) -> list[str]:
    return ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
            "--hide-scrollbars"]


def probe(html_path: Path, tmp: Path, chromium: str, *, width: int = 1200) -> dict:
    """Load ``html_path`` in headless Chromium; return the probe's JSON verdict plus the path of a
    full-page screenshot (``screenshot``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    page = html_path.read_text(encoding="utf-8")
    page = page.replace("<head>", "<head>" + _HEAD_PROBE, 1)
    page = page.replace("</body>", _BODY_PROBE + "</body>", 1)
    probed = tmp / "probed.html"
    probed.write_text(page, encoding="utf-8")
    env = {**os.environ, "HOME": str(tmp)}
    dom = subprocess.run([chromium, *_flags(tmp), "--virtual-time-budget=10000", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=180, env=env)
    m = re.search(r'<pre id="__probe">(.*?)</pre>', dom.stdout, re.S)
    if not m:
        raise AssertionError(f"the probe did not run in Chromium (exit {dom.returncode}): {dom.stderr[-2000:]}")
    import html as _html

    verdict = json.loads(_html.unescape(m.group(1)))
    shot = tmp / "page.png"
    height = max(int(verdict["height"]), 600)
    subprocess.run([chromium, *_flags(tmp), f"--window-size={width},{min(height, 16000)}",
                    f"--screenshot={shot}", html_path.resolve().as_uri()],
                   capture_output=True, text=True, timeout=180, env=env)
    verdict["screenshot"] = str(shot)
    return verdict
