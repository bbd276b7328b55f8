"""MLflow tracking (to be written: issue 5)."""
from __future__ import annotations


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    import os

    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def sweep_callbacks(study, tracking_uri: str, resume: bool = False) -> list:
    """Ray Tune callbacks that log the study to MLflow (driver side, single writer)."""
    return []
