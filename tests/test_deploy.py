"""deploy/: the Ray cluster launcher config and the KubeRay RayJob manifest (issue 15).

The launcher YAML is validated against Ray's own cluster schema (ray/autoscaler/ray-schema.json
of the pinned Ray) with jsonschema, as `ray up` does; the RayJob is checked for the fields
KubeRay's ray.io/v1 RayJob requires. Both are checked to run a real study of this repository,
with token authentication, results on s3:// and the MLflow server of the README. No cluster is
started here: tests/test_cluster_join.py runs `ray start` for real.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def study_args(command: str) -> dict:
    """`gradmix-tune ABLATION --flag value ...` -> {"ablation": ..., "--flag": value}."""
    words = shlex.split(command)
    i = words.index("gradmix-tune")
    out = {"ablation": words[i + 1]}
    rest = words[i + 2:]
    for j, w in enumerate(rest):
        if w.startswith("--"):
            out[w] = rest[j + 1] if j + 1 < len(rest) and not rest[j + 1].startswith("--") else True
    return out


def check_study_command(command: str) -> dict:
    """What both deployments run: a study of this repository joining the cluster it runs in,
    results on S3, and (parsed with the CLI's own parser) only options the CLI knows."""
    from gradmix_tune.cli import build_parser

    args = study_args(command)
    assert (ROOT / args["ablation"]).is_file(), args["ablation"]
    assert args.get("--address") == "auto"
    assert str(args.get("--storage", "")).startswith("s3://")
    words = shlex.split(command)
    ns = build_parser().parse_args(["sweep", *words[words.index("gradmix-tune") + 1:]])
    assert ns.ablation == args["ablation"] and ns.address == "auto"
    return args


# ---------------------------------------------------------------------------- Ray cluster launcher
@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())


def test_launcher_config_is_valid_for_ray_up(launcher):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)  # what `ray up` checks first
    # and what its schema cannot say
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = [t for t in types if t != launcher["head_node_type"]]
    assert workers and all(types[t]["max_workers"] <= launcher["max_workers"] for t in workers)
    assert all(types[t].get("min_workers", 0) <= types[t]["max_workers"] for t in workers)


def test_launcher_config_sets_up_token_auth_mlflow_and_the_package(launcher):
    mounts = launcher["file_mounts"]
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"  # one token on every node
    assert mounts.get("~/gradmix-tune") == "."
    assert (ROOT / mounts["~/gradmix.env"]).is_file()
    head, workers = launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]
    starts = [c for c in head + workers if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert any("--head --port=6379" in c for c in head)
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in workers)
    setup = " ".join(launcher["setup_commands"])
    assert "-c ~/gradmix-tune/constraints.txt" in setup and "gradmix-tune[server]" in setup
    server = next(c for c in head if "mlflow server" in c)
    assert "--backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\"" in server
    assert "--artifacts-destination \"s3://$GRADMIX_BUCKET/mlflow\"" in server and "--port 5000" in server
    env = dict(line.split("=", 1) for line in (ROOT / mounts["~/gradmix.env"]).read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://") and env["GRADMIX_BUCKET"]
    # the study command the file's header (and the README) give
    header = "\n".join(line[1:].strip() for line in (DEPLOY / "ray-cluster.yaml").read_text().splitlines()
                       if line.startswith("#"))
    cmd = re.search(r"'cd ~/gradmix-tune && (gradmix-tune .*?)'", header.replace("\\\n", " "), re.S).group(1)
    args = check_study_command(" ".join(cmd.split()))
    assert args["--storage"] == "s3://$GRADMIX_BUCKET/ray_results"
    assert args["--tracking-uri"] == "http://localhost:5000"


# ---------------------------------------------------------------------------- KubeRay RayJob
@pytest.fixture(scope="module")
def rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_rayjob_has_the_fields_kuberay_requires(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rayjob["metadata"]["name"])  # a DNS-1123 label
    spec = rayjob["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head.get("rayStartParams", {}), dict)
    assert all(isinstance(v, str) for v in head.get("rayStartParams", {}).values())  # map[string]string
    assert containers(head) and all(c["name"] and c["image"] for c in containers(head))
    names = set()
    for g in cluster["workerGroupSpecs"]:
        assert g["groupName"] not in names
        names.add(g["groupName"])
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values())
        assert containers(g) and all(c["name"] and c["image"] for c in containers(g))
    for c in [*containers(head), *(c for g in cluster["workerGroupSpecs"] for c in containers(g))]:
        for e in c.get("env", []):
            assert set(e) <= {"name", "value", "valueFrom"} and isinstance(e.get("value", ""), str), e
        for res in c.get("resources", {}).values():
            assert all(isinstance(v, str) for v in res.values()), res  # quantities are strings
    assert spec.get("shutdownAfterJobFinishes") is True and spec.get("ttlSecondsAfterFinished", 0) >= 0


def test_rayjob_runs_a_study_with_token_auth_s3_and_the_mlflow_server(rayjob):
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pinned("ray")  # the cluster's Ray = the one the package pins
    assert cluster["authOptions"]["mode"] == "token"  # KubeRay gives every container the token
    args = check_study_command(spec["entrypoint"])
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in containers(g)}
    assert len(images) == 1  # driver and trials run the same code
    for g in groups:
        env = {e["name"]: e.get("value") for c in containers(g) for e in c.get("env", [])}
        assert env["MLFLOW_TRACKING_URI"] == args["--tracking-uri"]
        assert re.fullmatch(r"https?://[^/]+(:\d+)?", env["MLFLOW_TRACKING_URI"])
        assert any("secretRef" in s for c in containers(g) for s in c.get("envFrom", []))  # S3 credentials
    assert "FROM rayproject/ray:" + pinned("ray") in (DEPLOY / "Dockerfile").read_text()
