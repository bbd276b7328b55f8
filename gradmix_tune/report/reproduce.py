"""The command line that re-makes one trial alone: `reproduce_command(params)`.

A trial's MLflow params are its flattened experiment config (values as str()). The command sets,
on top of `gradmix-tune run`'s defaults (config.ExperimentConfig), every key whose value differs
from the default, plus the seed and the CPU thread count (float sums differ with the thread count,
so a trial is bit-exact only at the same count). data.root is never written: the data come from
$GRADMIX_DATA_ROOT. Run it from the repository root; it prints the trial's final average accuracy
(`--json PATH` writes it at full precision).
"""
from __future__ import annotations

import ast
import json
import shlex
from typing import Any

from ..config import ExperimentConfig

SKIP = {"data.root", "seed", "train.threads", "train.device"}
PROGRAM = "gradmix-tune run --no-track --data-root \"$GRADMIX_DATA_ROOT\""


def _value(text: Any) -> Any:
    """An MLflow param string back to its Python value ('None', 'True', '[100, 100]', '0.1', 'mnist')."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _yaml(v: Any) -> str:
    """A value as `--set` reads it (YAML): null, true, [100, 100], 0.1, mnist."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def reproduce_command(params: dict, seed: Any = None) -> str:
    """`gradmix-tune run --no-track --data-root "$GRADMIX_DATA_ROOT" --set train.threads=N --set seed=S
    --set KEY=VALUE ...` for a trial with these (flattened, MLflow) params; "" without params."""
    if not params:
        return ""
    defaults = ExperimentConfig().flat()
    vals = {k: _value(v) for k, v in params.items()}
    threads = vals.get("train.threads")
    threads = threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else 1
    s = vals.get("seed", seed)
    sets = [f"train.threads={threads}", f"seed={_yaml(s if s is not None else 0)}"]
    if vals.get("method"):  # the preset first: the keys after it are explicit anyway
        sets.append(f"method={_yaml(vals['method'])}")
    for k in sorted(vals):
        if k in SKIP or k == "method" or k not in defaults:
            continue
        if not _same(vals[k], defaults[k]):
            sets.append(f"{k}={_yaml(vals[k])}")
    return PROGRAM + "".join(f" --set {shlex.quote(x)}" for x in sets)


def per_seed_entries(arm: dict, runs_by_id: dict, metric: str) -> list[dict]:
    """An arm's per-seed list for summary.json: [{seed, <metric>, run_id, reproduce}]."""
    out = []
    for s, rid, v in zip(arm.get("seeds", []), arm.get("run_ids", []), arm.get("per_seed", [])):
        tr = runs_by_id.get(rid)
        out.append({"seed": s, metric: v, "run_id": rid,
                    "reproduce": reproduce_command(tr.params if tr is not None else {}, s)})
    return out


def study_span_s(sr) -> float | None:
    """Wall time of the study's trials: from the first trial's start to the last one's end (its
    start + its wall_time_s), in seconds; None without timed runs. Ray's start and the report's
    build come on top."""
    ends = [(tr.start_time, tr.start_time + 1000.0 * tr.metrics["wall_time_s"])
            for tr in getattr(sr, "runs", None) or [] if tr.start_time and tr.metrics.get("wall_time_s") is not None]
    if not ends:
        return None
    return (max(e for _, e in ends) - min(s for s, _ in ends)) / 1000.0
