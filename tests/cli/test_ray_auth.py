"""A token-authenticated Ray head runs only the jobs of clients that hold its token.

Ray clusters run with token authentication (`RAY_AUTH_MODE=token`; the session's token is
in `RAY_AUTH_TOKEN`, see tests/conftest.py), as raygram's deploy manifests and docs set them
up: anyone who reaches the job server's port could otherwise run any code on the cluster.
`ray job submit` with the token runs its entrypoint; without a token (a client in
`RAY_AUTH_MODE=disabled`, or a bare HTTP request) or with a wrong one, the head refuses the
submission and the entrypoint never runs.
"""
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import BIN, free_port, ray_head

SUBMIT_TIMEOUT_S = 300


def _submit(dashboard: int, env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--",
                           *entrypoint], env=env, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)


def test_job_submit_needs_the_clusters_token(tmp_path):
    dashboard = free_port()
    marker = tmp_path / "ran"
    sneaky = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"]
    with ray_head(tmp_path, dashboard_port=dashboard):
        env = dict(os.environ)  # RAY_AUTH_MODE=token and the session's RAY_AUTH_TOKEN
        deadline = time.monotonic() + SUBMIT_TIMEOUT_S
        while True:  # the head's job agent comes up some seconds after its GCS
            job = _submit(dashboard, env, sys.executable, "-c", "print(6 * 7)")
            busy = "No available agent" in job.stderr or "Connection refused" in job.stderr
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        assert "42" in job.stdout.splitlines(), job.stdout[-3000:]

        refused = {
            "no token (client auth disabled)": {**env, "RAY_AUTH_MODE": "disabled"},
            "wrong token": {**env, "RAY_AUTH_TOKEN": "0" * 64},
        }
        for case, client_env in refused.items():
            out = _submit(dashboard, client_env, *sneaky)
            assert out.returncode != 0, (case, out.stdout[-2000:])
            assert "succeeded" not in out.stdout, case
            text = (out.stdout + out.stderr).lower()
            assert "unauthorized" in text or "forbidden" in text or "authentication" in text, (case, text[-2000:])

        request = urllib.request.Request(f"http://127.0.0.1:{dashboard}/api/jobs/", method="POST",
                                         data=json.dumps({"entrypoint": " ".join(sneaky)}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=60)
            raise AssertionError("the job server accepted a submission without a token")
        except urllib.error.HTTPError as e:
            assert e.code == 401, e.code
        listing = urllib.request.Request(f"http://127.0.0.1:{dashboard}/api/jobs/",
                                         headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(listing, timeout=60) as answer:
            jobs = json.load(answer)
    assert [j["entrypoint"] for j in jobs] == [shlex.join([sys.executable, "-c", "print(6 * 7)"])], jobs
    assert not marker.exists()


def test_nothing_users_run_or_read_turns_ray_authentication_off():
    """raygram's package, job entry points, configs, docs, benchmarks and deploy files never set RAY_AUTH_MODE=disabled
    (a local `ray.init()` then keeps Ray's default, token authentication)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    files = [root / "README.md", *(p for folder in ("raygram", "jobs", "configs", "docs", "benchmarks", "deploy", "tools")
                                   for p in (root / folder).rglob("*") if p.is_file() and p.suffix != ".pyc")]
    offenders = [str(p.relative_to(root)) for p in files
                 if re.search(r"RAY_AUTH_MODE\W{0,6}disabled", p.read_text(errors="replace"))]
    assert offenders == []
