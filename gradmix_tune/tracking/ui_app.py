"""The ASGI app `gradmix-tune ui` has uvicorn serve: MLflow's own (mlflow.server.fastapi_app), whose
index page carries ui.default_view_script() so that experiments open on their runs (see ui.py).

Imported only by the server's workers: importing it imports mlflow's server.
"""
from __future__ import annotations

import os

from flask import Response
from mlflow.server import app as flask_app  # the Flask app mounted at "/" of the ASGI app
from mlflow.server.fastapi_app import app  # noqa: F401 - what uvicorn serves

from .ui import with_default_view

_mlflow_serve = flask_app.view_functions["serve"]  # "/": index.html, the single page of the UI


def _serve():
    index = os.path.join(flask_app.static_folder, "index.html")
    if not os.path.exists(index):
        return _mlflow_serve()  # MLflow's message about a source install without the built UI
    with open(index, encoding="utf-8") as f:
        resp = Response(with_default_view(f.read()), mimetype="text/html")
    resp.headers["Cache-Control"] = "no-cache"  # never a copy cached from a plain `mlflow ui` on this port
    return resp


flask_app.view_functions["serve"] = _serve
