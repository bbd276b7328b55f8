"""`gradmix-tune ui`: MLflow's own `mlflow ui`, set so that an experiment opens on its runs
("Model training") rather than on the GenAI overview.

What picks the view in MLflow 3.17 is the UI bundle (mlflow/server/js/build/static/js/), not the
store. In main.c2f5f8d4.js (3.17.2), the experiment-kind hook (webpack module 31080, export `Fi`)
is `n ? m(workflowType) : <the tag mlflow.experimentKind>` where `n` is a feature flag hard-coded
on (module 89511, `Z0: () => true`), so the tag is never read and the kind is that of the workflow
type. The workflow type (module 7975) is the URL's `?workflowType=` (genai | machine_learning),
else the browser's localStorage `mlflow.workflowType_v1` (which only the GenAI / Model training
toggle writes), else "genai". An experiment page without a tab then redirects to Runs for
machine_learning and to the GenAI Overview (or Traces) otherwise (module 24546 in 5439.*.chunk.js);
the inference from traces and runs (module 77504) is off under the same flag.

So no tag or run in the store can choose the view; the page can. This serves MLflow's index.html
with one inline script before the bundle: in a browser that has never chosen a workflow type it
records "machine_learning", which the app then reads as if the user had switched the toggle. A
choice made with the toggle is kept (the script writes only a missing key).

Run as `python -m gradmix_tune.tracking.ui <mlflow ui options>`: MLflow's CLI does everything as
`mlflow ui` does (store migration, artifact root, security middleware, uvicorn workers); only the
ASGI app its uvicorn serves is ui_app.py's, MLflow's app with that index.html.
"""
from __future__ import annotations

import json
import sys

WORKFLOW_KEY = "mlflow.workflowType_v1"  # the bundle's useLocalStorage: `${key}_v${version}`, a JSON value
DEFAULT_WORKFLOW = "machine_learning"  # the "Model training" side of the toggle ("genai": GenAI)
MLFLOW_APP = "mlflow.server.fastapi_app:app"  # what `mlflow ui` has uvicorn serve
APP = "gradmix_tune.tracking.ui_app:app"  # the same app, index.html with default_view_script()
MARK = "data-gradmix-default-view"


def default_view_script() -> str:
    """The inline script: record the default workflow type unless the browser has one."""
    key, value = json.dumps(WORKFLOW_KEY), json.dumps(json.dumps(DEFAULT_WORKFLOW))
    return (f"<script {MARK}>try{{if(window.localStorage.getItem({key})===null)"
            f"window.localStorage.setItem({key},{value})}}catch(e){{}}</script>")


def with_default_view(html: str) -> str:
    """MLflow's index.html with the script first in <head> (before the deferred bundle runs)."""
    if MARK in html:
        return html
    i = html.find("<head>")
    if i < 0:
        return default_view_script() + html
    i += len("<head>")
    return html[:i] + default_view_script() + html[i:]


def main(argv: list[str] | None = None) -> None:
    """`mlflow ui ARGV`, its uvicorn serving APP instead of MLFLOW_APP."""
    import mlflow.server as server
    from mlflow.cli import cli

    build = getattr(server, "_build_uvicorn_command", None)
    swapped = []

    def build_with_default_view(*args, **kwargs):
        cmd = build(*args, **kwargs)
        swapped.extend(x for x in cmd if x == MLFLOW_APP)
        cmd = [APP if x == MLFLOW_APP else x for x in cmd]
        if not swapped:
            print("warning: this MLflow serves its own app: experiments may open on the GenAI overview "
                  "(use the links with workflowType=machine_learning)", file=sys.stderr, flush=True)
        return cmd

    if build is None:
        print("warning: this MLflow has no uvicorn server command: experiments may open on the GenAI "
              "overview (use the links with workflowType=machine_learning)", file=sys.stderr, flush=True)
    else:
        server._build_uvicorn_command = build_with_default_view
    cli.main(["ui", *(sys.argv[1:] if argv is None else argv)], prog_name="mlflow")


if __name__ == "__main__":
    main()
