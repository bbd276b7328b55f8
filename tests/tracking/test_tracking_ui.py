"""`gradmix-tune ui` opens an experiment on its runs ("Model training"), not on MLflow 3.17's GenAI
overview: MLflow 3.17's UI ignores the experiment tag mlflow.experimentKind and goes by the
browser's workflow type (localStorage, default "genai"), which the served index page sets to
"machine_learning" when the browser has none (gradmix_tune/tracking/ui.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from services import free_port, stop_process, wait_until

from gradmix_tune.tracking import Writer
from gradmix_tune.tracking.ui import DEFAULT_WORKFLOW, MARK, WORKFLOW_KEY, default_view_script, with_default_view


def _bundle() -> str:
    import importlib.util

    mlflow = Path(importlib.util.find_spec("mlflow").origin).parent  # without importing it (seconds)
    js = sorted((mlflow / "server/js/build/static/js").glob("main.*.js"))
    if not js:
        pytest.skip("this MLflow has no built UI (a source install)")
    return js[0].read_text(errors="replace")


def test_the_key_and_value_are_those_the_installed_ui_reads():
    """If an MLflow upgrade renames the setting, this fails: redo the analysis in tracking/ui.py."""
    js = _bundle()
    m = re.search(r'\{key:"(mlflow\.workflowType)",version:(\d+),initialValue:', js)
    assert m, "the UI no longer keeps its workflow type in localStorage under mlflow.workflowType"
    assert re.search(r"=\(e,t\)=>`\$\{e\}_v\$\{t\}`", js), "the UI's localStorage key is no longer KEY_vVERSION"
    assert WORKFLOW_KEY == f"{m.group(1)}_v{m.group(2)}"
    assert f'MACHINE_LEARNING="{DEFAULT_WORKFLOW}"' in js


def test_the_script_goes_first_in_head_once_and_keeps_a_choice():
    page = '<!doctype html><html><head><meta charset="utf-8"/><script defer src="main.js"></script></head></html>'
    out = with_default_view(page)
    assert out.startswith("<!doctype html><html><head>" + default_view_script() + '<meta charset="utf-8"/>')
    assert with_default_view(out) == out and out.count(MARK) == 1
    script = default_view_script()
    assert f"getItem({json.dumps(WORKFLOW_KEY)})===null" in script, "a browser that chose keeps its choice"
    assert f"setItem({json.dumps(WORKFLOW_KEY)},{json.dumps(json.dumps(DEFAULT_WORKFLOW))})" in script


@pytest.mark.integration
def test_chromium_opens_the_experiment_on_its_runs(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    w = Writer(uri, "ui-study")  # the experiment as a sweep or `gradmix-tune run` creates it
    w.put("run", "run", {"name": "ui-run", "tags": {"method": "er"}})
    w.put("log", "run", {"metrics": [["final_avg_acc", 0.5, int(time.time() * 1000), 0, "final"]]})
    w.put("end", "run", {"status": "FINISHED"})
    assert w.close() is None, "all sent"
    exp_id, run_id = w.experiment_id, w.run_ids["run"]

    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "gradmix_tune", "ui", "--tracking-uri", uri,
                                 "--port", str(port)], cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "MLFLOW_WORKERS": "1"})  # `mlflow ui --workers`: 1 starts faster
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: "MLflow UI ready on" in log.read_text(), 90, "gradmix-tune ui", proc, log)
        index = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert MARK in index and index.index(MARK) < index.index("static/js/main."), "the script runs before the app"

        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                 f"--user-data-dir={tmp_path / 'profile'}",  # a browser that has never chosen a view
                 "--virtual-time-budget=15000"]
        dom = subprocess.run(flags + ["--dump-dom", f"{base}/#/experiments/{exp_id}"], capture_output=True,
                             text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        hrefs = set(re.findall(r'href="(#/experiments/[^"]*)"', page))
        # the runs table: the run's row links to its page; the side bar is Model training's
        assert f"#/experiments/{exp_id}/runs/{run_id}" in hrefs and "ui-run" in page, sorted(hrefs)
        assert any(h.startswith(f"#/experiments/{exp_id}/runs?") and "workflowType=machine_learning" in h
                   for h in hrefs), sorted(hrefs)
        assert not any("workflowType=genai" in h or "/overview" in h for h in hrefs), sorted(hrefs)
    finally:
        stop_process(proc)
