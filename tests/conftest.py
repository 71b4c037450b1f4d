"""Shared test set-up: float64 JAX, Ray token authentication, one local Ray instance for the whole session.

Every Ray cluster the tests start runs with token authentication, as clusters do by default
since Ray 2.59 and as users should run them: the session sets `RAY_AUTH_MODE=token` and a
random per-session `RAY_AUTH_TOKEN` before anything imports Ray, so this process, the Ray
heads and workers it starts and every `raygram` / `ray job submit` subprocess (they inherit
the environment) agree on both. Ray reads the token from `RAY_AUTH_TOKEN` first, before
`RAY_AUTH_TOKEN_PATH` and `~/.ray/auth_token`, so the user's `~/.ray` is neither read nor
written.
"""
import os
import secrets
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, the form `ray get-auth-token --generate` gives
os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


@pytest.fixture(scope="session")
def ray_address():
    """GCS address of a local Ray instance (token authentication) shared by all tests (starting one takes ~5 s)."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="rg", dir="/tmp")  # AF_UNIX paths must stay short
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
