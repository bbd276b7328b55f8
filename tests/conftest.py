"""Shared fixtures."""
import logging
import os

import pytest


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray (2 CPUs, no dashboard) per test module; drivers under test join it with
    --address, so killing a driver kills only the driver."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    if ray.is_initialized():  # a Ray left by an earlier module's helper: start this module's own
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tracked_study(tmp_path_factory):
    """The tiny Ray Tune study of tests/helpers.py, tracked in a sqlite store and a real MLflow
    server; built once per session for tests/tracking and tests/report."""
    from helpers import shared_study  # imports ray: only for the tests that ask for the study

    b = shared_study(tmp_path_factory)
    yield b
    b.stop()
