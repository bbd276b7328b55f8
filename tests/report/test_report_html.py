"""report.html is self-contained: figures embedded as base64 PNGs, no external asset; it opens in
headless Chromium (Debian `chromium`) served from a local folder without any request but its own,
and prints to PDF. report.md keeps relative figure links (for GitHub)."""
from __future__ import annotations

import base64
import html.parser
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradmix_tune.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folder(syn_store, tmp_path_factory) -> Path:
    return build_report("syn_digits", syn_store.uri, tmp_path_factory.mktemp("html"))


class Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href", "srcset", "data", "poster") and v]


def test_html_embeds_every_figure_and_references_nothing_outside(folder):
    page = (folder / "report.html").read_text()
    p = Refs()
    p.feed(page)
    imgs = [v for t, k, v in p.refs if t == "img"]
    figs = sorted((folder / "figures").glob("*.png"))
    assert len(imgs) == len(figs) >= 8  # seeds, factor plot, 6 accuracy matrices
    for v in imgs:
        assert v.startswith("data:image/png;base64,")
        assert base64.b64decode(v.split(",", 1)[1])[:8] == PNG
    assert {base64.b64decode(v.split(",", 1)[1]) for v in imgs} == {f.read_bytes() for f in figs}
    for tag, attr, v in p.refs:
        if tag == "a":
            continue  # links to MLflow run pages are navigation, not assets
        assert v.startswith("data:"), (tag, attr, v)
    assert "<script" not in page and not re.search(r"url\(", page) and "@import" not in page
    assert "@media print" in page
    md = (folder / "report.md").read_text()
    assert "data:image" not in md
    for f in figs:
        assert f"](figures/{f.name})" in md, "report.md links the figures relatively"


def test_chromium_opens_the_html_without_a_failed_request(folder, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(folder / "report.html", served / "report.html")  # only the page: no figures/ beside it
    log = tmp_path / "server.log"
    with open(log, "w") as logf:
        server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1",
                                   "--directory", str(served)], stdout=logf, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        for _ in range(100):
            m = re.search(r"port (\d+)", log.read_text())
            if m:
                port = int(m.group(1))
                break
            time.sleep(0.1)
        assert port, log.read_text()
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                 f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
        url = f"http://127.0.0.1:{port}/report.html"
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "<h2>Findings</h2>" in dom.stdout and dom.stdout.count("<img") >= 8
        pdf = tmp_path / "report.pdf"
        out = subprocess.run(flags + [f"--print-to-pdf={pdf}", "--no-pdf-header-footer", url], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 50_000
    finally:
        server.terminate()
        server.wait(timeout=10)
    requests = re.findall(r'"GET (\S+) HTTP/[\d.]+" (\d+)', log.read_text())
    assert requests and {path for path, _ in requests} == {"/report.html"}, requests
    assert all(code in ("200", "304") for _, code in requests), requests  # 304: the second load, cached
