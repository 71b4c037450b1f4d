"""Shared test set-up: float64 JAX, one local Ray instance for the whole session."""
import os
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# Ray >= 2.59 turns on token authentication for local clusters; every process that joins
# (this one, workers, drivers started by tests) must agree on the mode.
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session")
def ray_address():
    """GCS address of a local Ray instance shared by all tests (starting one takes ~5 s)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rg", dir="/tmp")  # AF_UNIX paths must stay short
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
