"""MLflow runs -> reports/<study>/ (to be written: issue 5)."""
from __future__ import annotations


def after_sweep(study, tracking_uri: str, out_dir: str = "reports"):
    """Build the study's report at the end of a sweep; returns the report folder or None."""
    return None


def register(sub) -> None:
    """Add the `report` subcommand. Keep heavy imports inside the command function."""
    p = sub.add_parser("report", help="build reports/STUDY/ from the MLflow store")
    p.add_argument("study")
    p.set_defaults(func=lambda args: print("not implemented yet") or 1)
