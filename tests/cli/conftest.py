"""Servers the command-line tests talk to, all on 127.0.0.1: an S3 API (moto) and a Ray head.

The S3 server is moto's, in a thread of the test process; Ray workers in other processes
reach it through s3fs as they would reach S3 or MinIO.
"""
import contextlib
import logging
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from builds import stop_process_group

BIN = pathlib.Path(sys.executable).parent
BUCKET = "grams"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (and is closed now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of an S3 server on 127.0.0.1 with one bucket, BUCKET (moto accepts any credentials)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def bucket_keys(endpoint: str) -> list[str]:
    """Every key in BUCKET."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@contextlib.contextmanager
def ray_head(cwd, num_cpus: int = 1, dashboard_port: int | None = None):
    """`ray start --head` run in the folder `cwd`, on 127.0.0.1 with its own port for every agent
    (other Ray clusters may run on this machine); yields its GCS address and stops it after.

    The head runs with the session's token authentication (RAY_AUTH_MODE and RAY_AUTH_TOKEN,
    set by tests/conftest.py): drivers the tests start inherit both and are let in.

    Args:
      cwd: the head's working directory.
      num_cpus: CPUs the head advertises.
      dashboard_port: if given, the head runs its dashboard (and with it the job server that
        `ray job submit` talks to) on 127.0.0.1 at this port; else no dashboard.
    """
    env = dict(os.environ)
    assert env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_AUTH_TOKEN"), "tests/conftest.py sets token auth"
    port = free_port()
    agents = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")]
    if dashboard_port is None:
        dashboard = ["--include-dashboard=false"]
    else:
        dashboard = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # AF_UNIX paths must stay short
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", *dashboard, f"--num-cpus={num_cpus}",
                             f"--temp-dir={temp}", "--disable-usage-stats", *agents],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a loaded machine may take long to start the GCS
        while time.monotonic() < deadline and head.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        assert head.poll() is None, "ray start --head exited"
        yield f"127.0.0.1:{port}"
    finally:
        stop_process_group(head)
