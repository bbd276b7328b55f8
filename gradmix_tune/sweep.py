"""Ablation YAML -> Ray Tune study (to be written: issue 4)."""
from __future__ import annotations


def register(sub) -> None:
    """Add the `sweep` subcommand. Keep heavy imports (ray) inside the command function."""
    p = sub.add_parser("sweep", help="run an ablation study with Ray Tune")
    p.add_argument("ablation")
    p.set_defaults(func=lambda args: print("not implemented yet") or 1)
