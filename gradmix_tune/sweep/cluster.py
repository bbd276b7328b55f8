"""Starting or joining Ray, and checking the cluster can run the study (a trial fits a node, storage is shared).

A local Ray is started per study unless `--address`/RAY_ADDRESS names a cluster; on a
multi-node cluster a local storage path must be visible from every node that can run a trial
(checked with one tiny task per node).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import ConfigError
from . import ray_compat
from .study import Study, is_uri


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, dashboard: bool) -> bool:
    """Connect to (or start) Ray. Returns True when this call started it (so we shut it down)."""
    if ray.is_initialized():
        return False
    # "token authentication is enabled" on every start: true, and nothing for the user to do
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = dict(include_dashboard=dashboard, log_to_driver=False,
                                  logging_level=logging.WARNING, configure_logging=True)
    if address:
        if num_cpus is not None or num_gpus is not None:
            raise ConfigError("--address", None, "--num-cpus / --num-gpus only apply to a local Ray",
                              "size the cluster where it is started, or drop --address")
        check_join(address)  # a cluster that cannot be joined: one exit-2 line, in seconds
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RayError) as e:  # passed the check, refused anyway (rare): no traceback
            raise ConfigError("--address", None, f"could not join the Ray cluster at {address}: "
                              f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}",
                              "check the address and that this machine runs the cluster's Ray version") from None
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return True


_TOKEN_FIX = ("copy the cluster's token (`ray get-auth-token` on the head node) to ~/.ray/auth_token on this "
              "machine, or set RAY_AUTH_TOKEN to it")


def check_join(address: str, timeout_s: float = 60.0) -> None:
    """Before ray.init(address=HOST:PORT): something listens there, and it takes this machine's
    token. A cluster that `ray start --head` launched where a token exists requires one, and
    ray.init looks for it only with address "auto"; so, like `auto`, use the token when one is
    available (RAY_AUTH_MODE=token unless RAY_AUTH_MODE is set). A refused join is a ConfigError
    naming the address and the fix, raised within seconds, instead of Ray's ~20 s of
    InvalidAuthToken warnings ending in a ConnectionError. "auto" and ray:// pass through."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError("--address", None, f"nothing answers at {address} ({e.strerror or e})",
                          "start the cluster first (`ray start --head --port PORT` on the head node) or correct "
                          "--address / RAY_ADDRESS (HEAD_IP:PORT, the port `ray start --head` printed)") from None
    mode = os.environ.get("RAY_AUTH_MODE")
    has_token = ray_compat.token_available()
    if mode is not None and mode.lower() == "token" and not has_token:
        raise ConfigError("--address", None, f"RAY_AUTH_MODE=token but no Ray token was found to join {address}",
                          _TOKEN_FIX)
    if mode is None and has_token:
        # a cluster started without token auth (e.g. ray.cluster_utils) must be joined without one:
        # a driver in token mode refuses its nodes' calls. Try tokenless first; use the token only
        # when the cluster asks for it.
        os.environ["RAY_AUTH_MODE"] = "disabled"
        try:
            status, why = ray_compat.probe_gcs(address, timeout_s)
        finally:
            del os.environ["RAY_AUTH_MODE"]
        if status == "ok":
            return
    ray_compat.enable_token_auth_if_available()
    status, why = ray_compat.probe_gcs(address, timeout_s)
    if status == "ok":
        return
    if status == "auth":
        if mode is not None and mode.lower() == "disabled":
            problem = f"the Ray cluster at {address} requires token authentication but RAY_AUTH_MODE=disabled here"
            fix = "unset RAY_AUTH_MODE; " + _TOKEN_FIX
        elif not has_token:
            problem = (f"the Ray cluster at {address} requires token authentication and no token was found here "
                       "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
            fix = _TOKEN_FIX
        else:
            source = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                      f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
                      if os.environ.get("RAY_AUTH_TOKEN_PATH") else "~/.ray/auth_token")
            problem = f"the Ray cluster at {address} refused this machine's token (from {source})"
            fix = ("replace it with the cluster's token (`ray get-auth-token` on the head node prints it), in "
                   "~/.ray/auth_token here or in RAY_AUTH_TOKEN")
        raise ConfigError("--address", None, problem, fix)
    detail = f" ({why.rstrip('.')})" if why else f" within {timeout_s:g} s"
    raise ConfigError("--address", None, f"{address} accepts connections but does not answer as a Ray cluster{detail}",
                      "point --address / RAY_ADDRESS at the head node's GCS port (6379 unless `ray start --head "
                      "--port` chose another)")


def check_cluster(study: Study, storage_given: bool) -> int:
    """After Ray is up: the trial fits on a node, multi-node runs use shared storage.
    Returns how many trials fit at once."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    cpu, gpu = study.resources["cpu"], study.resources["gpu"]
    fits_node = any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu for n in nodes)
    if not fits_node:
        have = ", ".join(f"{n['Resources'].get('CPU', 0):g} CPU/{n['Resources'].get('GPU', 0):g} GPU"
                         for n in nodes)
        raise ConfigError(study.path, "resources",
                          f"a trial needs {cpu:g} CPU and {gpu:g} GPU but no Ray node has that ({have})",
                          "lower resources.cpu / resources.gpu, or start Ray with more (--num-cpus, --num-gpus)")
    if len(nodes) > 1 and not is_uri(study.storage_path):
        # a local path is shared storage only if every node that can run a trial sees it: ask them
        hosts = [n for n in nodes if n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu]
        blind = nodes_not_seeing(study.storage_path, hosts)
        if blind:
            given = "" if storage_given else " (the default, a folder of this machine)"
            raise ConfigError("--storage", None,
                              f"this Ray cluster has {len(nodes)} nodes but {len(blind)} of them cannot see the "
                              f"results folder {study.storage_path}{given}: {', '.join(blind)}",
                              "pass --storage with shared storage: an NFS path mounted at the same place on "
                              "every node, or s3://bucket/path")
    slots = total.get("CPU", 0) // cpu
    if gpu > 0:
        slots = min(slots, total.get("GPU", 0) // gpu)
    return max(int(slots), 1)


def _sees(path: str, token: str) -> bool:
    """On a node: does the file at `path` hold `token`?"""
    try:
        with open(path) as f:
            return f.read() == token
    except OSError:
        return False


def nodes_not_seeing(folder: str, nodes: list[dict], timeout_s: float = 60.0) -> list[str]:
    """Nodes (as "ip (node id)") on which a file just written to `folder` here cannot be read:
    one zero-CPU task pinned to each node looks for it. A node that does not answer in time is
    reported as a warning, not an error."""
    token = uuid.uuid4().hex
    marker = Path(folder) / f".gradmix-shared-{token}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
    try:
        refs = {f"{n.get('NodeManagerAddress', '?')} (node {n['NodeID'][:8]})":
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token) for n in nodes}
        ready, late = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        blind, unknown = [], []
        for name, ref in refs.items():
            if ref not in ready:
                unknown.append(name)
                continue
            try:
                if not ray.get(ref):
                    blind.append(name)
            except Exception:  # noqa: BLE001 - the node died meanwhile: Ray handles trials there
                unknown.append(name)
        for ref in late:
            ray.cancel(ref, force=True)
        if unknown:
            print(f"warning: could not check that {', '.join(unknown)} see(s) {folder}; results there "
                  "would be lost if not", file=sys.stderr, flush=True)
        return blind
    finally:
        try:
            marker.unlink()
        except OSError:
            pass
