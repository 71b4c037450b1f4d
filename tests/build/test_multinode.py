"""Gram builds and a solve on a real multi-node Ray cluster, all on 127.0.0.1.

The cluster: `ray start --head --num-cpus=1 --num-gpus=0` and worker nodes `ray start
--address=... --num-cpus=1 --num-gpus=1`, each a `--block` process of this test with its
own port for every agent (other clusters may run on this machine). Worker nodes only
advertise their GPU: JAX runs on the CPU (`JAX_PLATFORMS=cpu`, single-threaded XLA) and
`RAYGRAM_EMULATED_GPUS=1` lets the workers' GPU check pass. Every Ray process gets this
process's environment, so the cluster runs in whatever `RAY_AUTH_MODE` the session set.

The driver of each build runs in a subprocess (`DRIVER`), joined to the cluster with
`ray.init(address=...)`: this process keeps the session's local Ray instance for the other
tests. The kernel is a small dense Erf network whose tiles wait a moment in a host
callback (no CPU spent), so that a worker is busy when its node is killed and a joining
node finds tiles left. Every finished store is compared bit for bit with the store of the
spread build, and to float64 round-off with the monolithic kernel_fn.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import textwrap

import numpy as np
import psutil
import pytest

from builds import stop_process_group
from raygram._neural_tangents import stax
from raygram.store.gram_store import GramStore

pytestmark = pytest.mark.multinode

BIN = os.path.dirname(sys.executable)
N, M, TILE, FEATURES = 48, 8, 8, 6
START_S = 300  # bound on a node or driver start on a loaded machine

DRIVER = textwrap.dedent('''
    import json, logging, os, sys, time
    spec = json.loads(sys.argv[1])
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import ray
    from raygram import GramStore, SolverOptions, TilingOptions, build_gram, predict
    from raygram._neural_tangents import stax
    from raygram.errors import RaygramError

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("raygram").setLevel(logging.INFO)
    BASE = stax.serial(stax.Dense(64), stax.Erf(), stax.Dense(1))[2]

    def pause(a):
        time.sleep(spec["sleep"])
        return a

    def kernel_fn(x1, x2=None, get=None):
        x1 = jax.pure_callback(pause, jax.ShapeDtypeStruct(x1.shape, x1.dtype), x1, vmap_method="broadcast_all")
        return BASE(x1, x2, get)

    def gpu_nodes():
        return {n["NodeID"]: n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0}

    def names():
        return {node: next((k for k in n["Resources"] if k.startswith("mn_")), "?") for node, n in gpu_nodes().items()}

    def wait_nodes(count):
        deadline = time.monotonic() + 300
        while len(gpu_nodes()) != count:
            if time.monotonic() > deadline:
                sys.exit(f"{len(gpu_nodes())} GPU nodes alive, expected {count}")
            time.sleep(0.2)

    ray.init(address=spec["address"], log_to_driver=False)
    wait_nodes(spec["nodes"])
    x = np.random.default_rng(0).normal(size=(spec["n"], spec["features"]))
    x_test = np.random.default_rng(1).normal(size=(spec["m"], spec["features"]))
    if spec["mode"] == "solve":
        from ray.util.dask import RayDaskCallback

        def where(key, object_refs):
            with open(spec["tasks"], "a") as f:
                f.write(ray.get_runtime_context().get_node_id() + "\\n")

        y = np.random.default_rng(2).normal(size=(spec["n"], 2))
        store = GramStore(spec["store"], read_only=True)
        with RayDaskCallback(ray_pretask=where):
            on_ray = predict(store, y, SolverOptions(scheduler="ray", diag_reg=(1e-3,)))
        local = predict(store, y, SolverOptions(diag_reg=(1e-3,)))
        diff = max(float(np.max(np.abs(on_ray.mean[k] - local.mean[k]))) for k in local.mean)
        scale = max(float(np.max(np.abs(local.mean[k]))) for k in local.mean)
        print("RESULT " + json.dumps({"diff": diff, "scale": scale, "names": names()}), flush=True)
        sys.exit(0)

    first, seen, joined, held, known = set(gpu_nodes()), [0], [False], [False], names()
    progress = open(spec["progress"], "a", buffering=1)

    def on_tile(result):
        node = result["node"]
        if node not in known:
            known.update(names())
        progress.write(json.dumps({"tile": str(result["tile"]), "node": node, "name": known.get(node, "?")}) + "\\n")
        seen[0] += 1
        if spec.get("killed") and not held[0] and os.path.exists(spec["killed"]):
            # The test killed a node: hold the build until Ray has declared it dead (its health checks
            # fail), so that the node's loss shows during the build, not after a quick one ended.
            held[0] = True
            wait_nodes(len(first) - 1)
        if spec.get("join") and not joined[0]:
            if node not in first:
                joined[0] = True
            elif seen[0] >= spec["join"]:
                # The test starts a node now: wait for it, then slow the build down until it computed a tile.
                wait_nodes(len(first) + 1)
                time.sleep(spec["drag"])

    tiling = TilingOptions(tile_size=spec["tile"], gpus_per_worker=1, cpus_per_worker=1,
                           wait_for_workers=spec.get("wait", 300))
    try:
        report = build_gram(spec["store"], kernel_fn, x, x_test, name="slow-erf", progress=False, on_tile=on_tile,
                            tiling=tiling)
    except RaygramError as e:
        print("RESULT " + json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        sys.exit(3)
    workers = [{k: w[k] for k in ("node", "tiles", "died", "node_lost")} for w in report.workers]
    print("RESULT " + json.dumps({"nodes": report.nodes, "names": known, "resubmitted": report.resubmitted,
                                  "computed": report.tiles_computed, "total": report.tiles_total,
                                  "summary": report.summary(), "workers": workers}), flush=True)
''')


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_ports(*names) -> list[str]:
    return [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port", *names)]


class Cluster:
    """A Ray head and worker nodes started by this test, each a `ray start --block` process.

    Args:
      root: a folder for the nodes' working directory.
    """

    def __init__(self, root):
        self.root = root
        self.env = {**os.environ, "JAX_PLATFORMS": "cpu", "RAYGRAM_EMULATED_GPUS": "1",
                    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
                    "RAY_raylet_start_wait_time_s": str(START_S)}  # a loaded machine registers nodes slowly
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="mn", dir="/tmp")  # AF_UNIX paths must stay short
        self.nodes: dict[str, subprocess.Popen] = {}
        self.started = 0  # worker nodes started so far
        self.head = self._start(["--head", f"--port={self.port}", "--num-cpus=1", "--num-gpus=0",
                                 "--include-dashboard=false", f"--temp-dir={self.temp}",
                                 *agent_ports("ray-client-server-port")], self.env)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and self.head.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.5)
        assert self.head.poll() is None, "ray start --head exited"

    def _start(self, args, env, log="head"):
        with open(os.path.join(self.root, f"{log}.log"), "ab") as out:  # what `ray start` said, for failures
            return subprocess.Popen([os.path.join(BIN, "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
                                     "--disable-usage-stats", *args], cwd=self.root, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def add(self, name: str, emulated: bool = True) -> None:
        """Start a worker node with 1 CPU and 1 GPU, marked by the resource `mn_<name>`; returns once it
        has registered with the head.

        One at a time: nodes of one cluster share the head's session folder, and two that start
        together can pick the same raylet socket name there.
        """
        env = dict(self.env)
        if not emulated:
            env.pop("RAYGRAM_EMULATED_GPUS")
        self.started += 1
        log = f"{name}-{self.started}"  # a fresh file: an earlier node's "started" must not count
        process = self.nodes[name] = self._start(
            [f"--address={self.address}", "--num-cpus=1", "--num-gpus=1",
             f"--resources={json.dumps({f'mn_{name}': 1})}", *agent_ports()], env, log=log)
        log = os.path.join(self.root, f"{log}.log")
        deadline = time.monotonic() + START_S
        while "Ray runtime started" not in open(log, errors="replace").read():
            assert process.poll() is None, f"ray start of node {name} exited:\n{open(log).read()[-3000:]}"
            assert time.monotonic() < deadline, f"node {name} did not start within {START_S} s"
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL a worker node: its `ray start` process, its raylet and every worker it started."""
        process = self.nodes.pop(name)
        tree = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=60)

    def stop(self, name: str) -> None:
        """Stop one worker node this test started: SIGTERM to its own `ray start --block` process group only."""
        stop_process_group(self.nodes.pop(name))

    def stop_all(self) -> None:
        for name in list(self.nodes):
            self.stop(name)

    def close(self) -> None:
        self.stop_all()
        stop_process_group(self.head)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head without GPUs; each test adds its worker nodes and stops them."""
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    yield running
    running.close()


@pytest.fixture
def nodes(cluster):
    """The cluster, with every worker node a test started stopped after it."""
    yield cluster
    cluster.stop_all()


def driver(cluster, tmp_path, **spec) -> subprocess.Popen:
    """Start a driver subprocess (`DRIVER`) with settings `spec`; its stdout and stderr go to files."""
    spec = {"address": cluster.address, "n": N, "m": M, "features": FEATURES, "tile": TILE, "sleep": 0.2,
            "progress": str(tmp_path / "progress.jsonl"), "store": str(tmp_path / "gram"), "mode": "build", **spec}
    env = {**cluster.env, "RAYGRAM_EMULATED_GPUS": ""} if spec.pop("bare", False) else cluster.env
    out, err = open(tmp_path / "driver.out", "w"), open(tmp_path / "driver.err", "w")
    process = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec)], cwd=tmp_path, env=env,
                               stdout=out, stderr=err)
    process.files = tmp_path
    return process


def result(process, timeout=600) -> dict:
    """The RESULT line of a finished driver (its stderr on failure)."""
    process.wait(timeout=timeout)
    out = (process.files / "driver.out").read_text()
    err = (process.files / "driver.err").read_text()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"driver exited {process.returncode} without a result:\n{out}\n{err[-4000:]}"
    found = json.loads(lines[-1].removeprefix("RESULT "))
    found["stderr"] = err
    return found


def progress(process) -> list[dict]:
    path = process.files / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition, what: str, process=None, timeout=START_S):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"the driver exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def inputs():
    return (np.random.default_rng(0).normal(size=(N, FEATURES)), np.random.default_rng(1).normal(size=(M, FEATURES)))


@pytest.fixture(scope="module")
def monolithic():
    """Every block of the kernel computed in one call of the plain kernel_fn (float64)."""
    x, x_test = inputs()
    kernel_fn = stax.serial(stax.Dense(64), stax.Erf(), stax.Dense(1))[2]
    out = {}
    for kind in ("nngp", "ntk"):
        out[(kind, "train_train")] = np.asarray(kernel_fn(x, None, kind))
        out[(kind, "test_train")] = np.asarray(kernel_fn(x_test, x, kind))
        out[(kind, "test_diag")] = np.array([kernel_fn(p[None], None, kind)[0, 0] for p in x_test])
    return out


def blocks(path) -> dict:
    store = GramStore(path, read_only=True)
    assert store.verify() == {}  # every tile present and matching its checksum
    return {(kind, block): np.asarray(store.gram(kind, block)[...]) for kind in store.kinds for block in store.plan.blocks}


def check_store(path, monolithic, reference=None) -> None:
    """The store at `path` is complete and verified, equals the monolithic kernel to float64 round-off
    (Erf is smooth) and, given a reference store, equals it bit for bit."""
    got = blocks(path)
    for key, want in monolithic.items():
        np.testing.assert_allclose(got[key], want, rtol=1e-12, atol=1e-12 * np.abs(want).max(), err_msg=str(key))
    if reference is not None:
        for key, want in blocks(reference).items():
            np.testing.assert_array_equal(got[key], want, err_msg=str(key))
    cli = subprocess.run([sys.executable, "-m", "raygram.cli", "verify", str(path)], capture_output=True, text=True,
                         timeout=600)
    assert cli.returncode == 0, cli.stdout + cli.stderr


@pytest.fixture(scope="module")
def spread(cluster, monolithic, tmp_path_factory):
    """A build on three worker nodes: its store (the reference of the other tests) and result."""
    tmp_path = tmp_path_factory.mktemp("spread")
    for name in ("a", "b", "c"):
        cluster.add(name)
    try:
        found = result(driver(cluster, tmp_path, nodes=3))
    finally:
        cluster.stop_all()
    return tmp_path / "gram", found


def test_tiles_spread_over_every_worker_node(spread, monolithic):
    path, found = spread
    assert "error" not in found, found
    names = found["names"]
    per_node = {names.get(node, node): entry["tiles"] for node, entry in found["nodes"].items()}
    print("per-node tiles:", per_node)
    assert sorted(per_node) == ["mn_a", "mn_b", "mn_c"] and all(count > 0 for count in per_node.values()), per_node
    assert sum(per_node.values()) == found["computed"] == found["total"]
    assert found["summary"].count("\n  node ") == 3, found["summary"]  # one line per node
    check_store(path, monolithic)


def test_a_killed_node_leaves_the_build_to_the_others(nodes, spread, monolithic, tmp_path):
    for name in ("a", "b", "c"):
        nodes.add(name)
    process = driver(nodes, tmp_path, nodes=3, killed=str(tmp_path / "killed"))
    # Kill the node of a tile just finished: its worker is busy with the next ones.
    wait_for(lambda: len(progress(process)) >= 4 and progress(process)[-1]["name"] != "?", "4 tiles", process)
    victim = progress(process)[-1]["name"].removeprefix("mn_")
    before = len(progress(process))
    nodes.kill(victim)
    (tmp_path / "killed").touch()
    found = result(process)
    assert "error" not in found, found
    lost = {found["names"].get(node, node): entry for node, entry in found["nodes"].items() if entry["lost"]}
    print(f"killed node mn_{victim} after {before} tiles; resubmitted {found['resubmitted']}; nodes {found['nodes']}")
    assert list(lost) == [f"mn_{victim}"], found["nodes"]
    assert found["resubmitted"] >= 1  # its tiles in flight went to the other nodes
    assert found["computed"] >= found["total"] and "left during the build" in found["summary"]
    check_store(tmp_path / "gram", monolithic, reference=spread[0])


def test_a_node_that_joins_mid_build_gets_tiles(nodes, spread, monolithic, tmp_path):
    nodes.add("a")
    process = driver(nodes, tmp_path, nodes=1, join=2, drag=2.0)
    wait_for(lambda: len(progress(process)) >= 2, "2 tiles", process)
    nodes.add("late")
    found = result(process)
    assert "error" not in found, found
    per_node = {found["names"].get(node, node): entry["tiles"] for node, entry in found["nodes"].items()}
    print("per-node tiles with a node joining:", per_node)
    assert per_node.get("mn_late", 0) > 0 and per_node.get("mn_a", 0) > 0, per_node
    check_store(tmp_path / "gram", monolithic, reference=spread[0])


def test_a_build_without_nodes_waits_for_one(nodes, spread, monolithic, tmp_path):
    process = driver(nodes, tmp_path, nodes=0)
    wait_for(lambda: "waiting up to 300 s" in (tmp_path / "driver.err").read_text(), "the waiting message", process)
    assert not (tmp_path / "gram").exists()  # nothing is written while waiting
    nodes.add("a")
    found = result(process)
    assert "error" not in found, found
    assert [entry["tiles"] for entry in found["nodes"].values()] == [found["total"]]
    check_store(tmp_path / "gram", monolithic, reference=spread[0])


def test_a_build_without_nodes_fails_clearly_after_its_wait(nodes, tmp_path):
    found = result(driver(nodes, tmp_path, nodes=0, wait=3))
    assert found["error"] == "WorkersLost", found
    assert "no Ray node could run a tile worker within tiling.wait_for_workers = 3 s" in found["message"], found
    assert "tiling.gpus_per_worker: each worker asks for 1 GPUs but the Ray cluster has 0" in found["message"]
    assert not (tmp_path / "gram").exists()


def test_worker_given_a_gpu_that_jax_cannot_see_fails_loudly(cluster, nodes, tmp_path):
    nodes.add("bare", emulated=False)
    found = result(driver(nodes, tmp_path, nodes=1, bare=True))
    assert found["error"] == "BuildError", found
    assert "was given GPU(s)" in found["message"] and "RAYGRAM_EMULATED_GPUS=1" in found["message"], found


def test_solve_with_the_ray_scheduler_runs_on_the_worker_nodes(nodes, spread, tmp_path):
    for name in ("a", "b"):
        nodes.add(name)
    tasks = tmp_path / "tasks.txt"
    found = result(driver(nodes, tmp_path, nodes=2, mode="solve", store=str(spread[0]), tasks=str(tasks)))
    assert "error" not in found, found
    counts = {}
    for node in tasks.read_text().split():
        name = found["names"].get(node, "head")
        counts[name] = counts.get(name, 0) + 1
    print("dask tasks per node:", counts, "max |ray - local| =", found["diff"])
    assert counts.get("mn_a", 0) + counts.get("mn_b", 0) > 0, counts
    assert found["diff"] <= 1e-10 * max(1.0, found["scale"]), found
