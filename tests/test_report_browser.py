"""The demo report as a reader's browser shows it: headless Chromium (the Debian package,
installed by .ci/run). No console errors, every image decoded, every table-of-contents link
resolves, tables scroll inside their wrapper, and a full-page screenshot that is not blank.

Without a Chromium binary the test is skipped, except where ``FISHERSCOPE_REQUIRE_BROWSER=1``
(.ci/run sets it), where a missing browser fails the run instead of hiding the check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from _browser import find_chromium, probe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        if os.environ.get("FISHERSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail("FISHERSCOPE_REQUIRE_BROWSER=1 but no chromium binary is on PATH; "
                        "install it (apt-get install chromium) or unset the variable.")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory, digits_model):
    from fisherscope.experiments import Context, load_config, run_experiment

    out = tmp_path_factory.mktemp("demo-browser")
    run = run_experiment(load_config(CONFIGS / "demo.toml"), out, context=Context(progress=False))
    return run.dir / "report.html"


def test_demo_report_in_headless_chromium(chromium, demo_report, tmp_path):
    v = probe(demo_report, tmp_path, chromium)
    assert v["errors"] == [], v["errors"]
    assert v["images"], "the demo report has figures"
    bad = [im for im in v["images"] if not im["complete"] or im["width"] == 0]
    assert not bad, f"images not decoded: {bad}"
    assert len(v["links"]) >= 5, "a table of contents with the report's sections"
    assert all(link["resolves"] for link in v["links"]), [lk for lk in v["links"] if not lk["resolves"]]
    assert v["unwrapped_tables"] == 0
    import matplotlib.image as mpimg

    shot = mpimg.imread(v["screenshot"])
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000
    assert float(np.asarray(shot[..., :3]).std()) > 0.05, "the screenshot is blank"
    keep = os.environ.get("FISHERSCOPE_KEEP_SCREENSHOT")
    if keep:  # for a person to look at: FISHERSCOPE_KEEP_SCREENSHOT=/some/dir
        shutil.copy(v["screenshot"], Path(keep) / "demo-report.png")


def test_narrow_screen_tables_scroll_instead_of_overflowing(chromium, demo_report, tmp_path):
    """At 480 px the page itself must not scroll sideways: wide tables scroll in their wrapper."""
    page = demo_report.read_text(encoding="utf-8")
    probe_js = ("<script>window.addEventListener('load',function(){var p=document.createElement('pre');"
                "p.id='__w';p.textContent=JSON.stringify({doc:document.documentElement.scrollWidth,"
                "win:window.innerWidth});document.body.appendChild(p);});</script>")
    narrow = tmp_path / "narrow.html"
    narrow.write_text(page.replace("</body>", probe_js + "</body>", 1), encoding="utf-8")
    import json
    import re
    import subprocess

    dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--user-data-dir={tmp_path / 'profile'}", "--window-size=480,900",
                          "--virtual-time-budget=10000", "--dump-dom", narrow.as_uri()],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)})
    m = re.search(r'<pre id="__w">(.*?)</pre>', dom.stdout, re.S)
    assert m, dom.stderr[-2000:]
    sizes = json.loads(m.group(1))
    assert sizes["doc"] <= sizes["win"] + 1, sizes
