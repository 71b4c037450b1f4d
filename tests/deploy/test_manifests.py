"""The deployment in deploy/ keeps its promises: Ray token authentication, GPU workers that scale
from zero onto tainted GPU nodes, one image name, no credentials in any file, an MLflow server
that answers the name the jobs use, a `ray up` config Ray accepts, and an image whose dependency
layer is pinned, hash-checked and built before the code.

Every manifest is read as YAML (all documents of every file); the MLflow server is started for
real on 127.0.0.1 with the Deployment's own arguments; the `ray up` config is checked against the
JSON schema shipped with the installed Ray.
"""
from __future__ import annotations

import functools
import http.client
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RAY_UP = DEPLOY / "ray-up-aws.yaml"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
CUDA_LOCK = DEPLOY / "requirements-cuda.lock"
NODEPS_LOCK = DEPLOY / "requirements-nodeps.lock"
MLFLOW_IN_CLUSTER = "mlflow.mlflow.svc:5000"   # the host the RayJob's tracking.uri names
CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|API_KEY", re.I)
PASSWORD_IN_URI = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")


# ---------------------------------------------------------------- reading the manifests

@functools.cache
def documents(path: pathlib.Path) -> tuple[dict, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def manifest_files() -> list[pathlib.Path]:
    """Every Kubernetes manifest in deploy/ (the kustomization and the `ray up` config aside)."""
    return [p for p in sorted(DEPLOY.glob("*.yaml")) if p not in (RAY_UP, KUSTOMIZATION)]


def resources(kind: str | None = None) -> list[dict]:
    found = [d for p in manifest_files() for d in documents(p)]
    return [d for d in found if kind is None or d["kind"] == kind]


def cluster_specs() -> list[tuple[str, dict]]:
    """(name, RayClusterSpec) of every RayCluster and of every RayJob that brings its own."""
    specs = [(d["metadata"]["name"], d["spec"]) for d in resources("RayCluster")]
    return specs + [(d["metadata"]["name"], d["spec"]["rayClusterSpec"]) for d in resources("RayJob")
                    if "rayClusterSpec" in d["spec"]]


def ray_pod_specs() -> list[tuple[str, dict]]:
    """(label, pod spec) of every Ray pod template: heads and worker groups."""
    pods = []
    for name, spec in cluster_specs():
        pods.append((f"{name}/head", spec["headGroupSpec"]["template"]["spec"]))
        pods += [(f"{name}/{g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    return pods


def all_pod_specs() -> list[tuple[str, dict]]:
    deployments = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in resources("Deployment")]
    return ray_pod_specs() + deployments


def containers(pod: dict) -> list[dict]:
    return pod.get("containers", []) + pod.get("initContainers", [])


def walk(node, path=()):
    """(path, value) of every scalar and list in a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        yield path, node
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))
    else:
        yield path, node


def env_entries() -> list[tuple[str, dict]]:
    """(file, env entry) of every `env` list anywhere in the manifests (autoscaler's included)."""
    return [(p.name, entry) for p in manifest_files() for d in documents(p) for path, value in walk(d)
            if path and path[-1] == "env" and isinstance(value, list) for entry in value]


def kustomize_images() -> dict[str, dict]:
    return {i["name"]: i for i in documents(KUSTOMIZATION)[0]["images"]}


def mlflow_container() -> dict:
    (deployment,) = [d for d in resources("Deployment") if d["metadata"]["name"] == "mlflow"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def mlflow_args() -> dict[str, str | None]:
    """The MLflow container's `--option=value` / `--flag` arguments as a dict."""
    args = {}
    for arg in mlflow_container()["args"]:
        key, _, value = arg.partition("=")
        args[key] = value or None
    return args


# ---------------------------------------------------------------- Kubernetes manifests

def test_manifests_parse_and_the_kustomization_lists_the_long_lived_ones():
    assert manifest_files(), "no manifests in deploy/"
    for path in manifest_files():
        for doc in documents(path):
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), path.name
    listed = set(documents(KUSTOMIZATION)[0]["resources"])
    assert all((DEPLOY / name).is_file() for name in listed), listed
    jobs = {p.name for p in manifest_files() if any(d["kind"] == "RayJob" for d in documents(p))}
    assert jobs, "no RayJob in deploy/"
    assert listed == {p.name for p in manifest_files()} - jobs, "kustomization.yaml resources"


def test_every_ray_cluster_uses_token_authentication():
    assert cluster_specs(), "no RayCluster in deploy/"
    for name, spec in cluster_specs():
        assert spec.get("authOptions", {}).get("mode") == "token", name
        assert Version(spec["rayVersion"]) >= Version("2.52"), f"{name}: authOptions needs Ray >= 2.52"


def test_every_ray_job_runs_on_a_token_authenticated_cluster():
    clusters = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in resources("RayCluster")}
    for job in resources("RayJob"):
        spec = job["spec"]
        if "rayClusterSpec" in spec:
            continue  # checked with the clusters
        key = (job["metadata"]["namespace"], spec["clusterSelector"]["ray.io/cluster"])
        assert key in clusters, f"RayJob {job['metadata']['name']} selects {key}, not defined in deploy/"
        assert clusters[key]["authOptions"]["mode"] == "token"


def test_nothing_overrides_the_ray_auth_mode():
    # KubeRay injects RAY_AUTH_MODE=token itself and does not override a value set in a container.
    overrides = [(f, e) for f, e in env_entries() if e.get("name") == "RAY_AUTH_MODE"]
    assert not overrides, overrides
    texts = [p.read_text() for p in sorted(DEPLOY.iterdir()) if p.is_file()]
    texts.append((ROOT / "docs" / "cluster.md").read_text())
    assert not [t for t in texts if re.search(r"RAY_AUTH_MODE\W{0,3}disabled", t)]
    modes = [v for p in manifest_files() for d in documents(p) for path, v in walk(d)
             if path[-2:] == ("authOptions", "mode")]
    assert modes and set(modes) == {"token"}, modes


def test_the_kustomization_names_registry_images():
    images = kustomize_images()
    assert {"raygram", "raygram-mlflow"} <= set(images)
    for name, image in images.items():
        registry = image["newName"].split("/")[0]
        assert "/" in image["newName"] and ("." in registry or ":" in registry or registry == "localhost"), \
            f"{name}: {image['newName']} names no registry (ImagePullBackOff)"
        assert image.get("newTag") and image["newTag"] != "latest", name


def test_every_container_uses_a_placeholder_that_the_kustomization_maps():
    images = kustomize_images()
    for label, pod in all_pod_specs():
        for container in containers(pod):
            assert container["image"] in images, f"{label}: {container['image']} is not mapped"
    ray_images = {c["image"] for _, pod in ray_pod_specs() for c in containers(pod)}
    assert ray_images == {"raygram"}, ray_images
    assert mlflow_container()["image"] == "raygram-mlflow"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
def test_kustomize_renders_only_registry_images():
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rendered = [str(v) for d in yaml.safe_load_all(out.stdout) for path, v in walk(d) if path[-1:] == ("image",)]
    wanted = {f"{i['newName']}:{i['newTag']}" for i in kustomize_images().values()}
    assert rendered and set(rendered) == wanted, rendered


def test_gpu_workers_scale_from_zero_onto_tainted_gpu_nodes():
    gpu_groups = []
    for name, spec in cluster_specs():
        assert spec.get("enableInTreeAutoscaling") is True, name
        for group in spec["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["containers"]):
                gpu_groups.append((name, group, pod))
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for name, group, pod in gpu_groups:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0 and group["maxReplicas"] >= 1, name
        assert pod.get("nodeSelector"), f"{name}/{group['groupName']}: no GPU nodeSelector"
        assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
                   and t.get("operator", "Equal") in ("Exists", "Equal") for t in pod.get("tolerations", [])), name


def test_the_head_runs_no_tiles_and_asks_for_no_gpu():
    for name, spec in cluster_specs():
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", name
        limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits, name


def test_every_ray_container_mounts_a_memory_backed_dev_shm():
    for label, pod in ray_pod_specs():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"] or [None]
            assert mount, f"{label}/{container['name']}: no /dev/shm"
            assert volumes[mount["name"]].get("emptyDir", {}).get("medium") == "Memory", label


def test_every_container_has_cpu_and_memory_requests_and_limits():
    for label, pod in all_pod_specs():
        for container in pod["containers"]:
            resources_ = container.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources_.get(part, {})), f"{label}/{container['name']} {part}"


def test_pods_run_as_non_root():
    for label, pod in all_pod_specs():
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, label
        for container in pod["containers"]:
            assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, label


def test_the_ray_job_submits_over_http_to_the_experiment_entry_point():
    jobs = resources("RayJob")
    assert jobs
    for job in jobs:
        spec = job["spec"]
        assert spec.get("submissionMode") == "HTTPMode", job["metadata"]["name"]
        words = shlex.split(spec["entrypoint"])
        assert words[0] == "python" and words[1].endswith("jobs/run_experiment.py")
        for path in words[1:3]:  # paths of the image's /opt/raygram, i.e. of this checkout
            assert (ROOT / path.removeprefix("/opt/raygram/")).is_file(), path
        settings = dict(w.split("=", 1) for w in words[3:] if w != "--set")
        assert settings["store"].startswith("s3://"), settings
        assert urlsplit(settings["tracking.uri"]).netloc == MLFLOW_IN_CLUSTER, settings


def test_the_mlflow_service_has_the_name_the_jobs_use():
    name, namespace, port = re.fullmatch(r"(.+)\.(.+)\.svc:(\d+)", MLFLOW_IN_CLUSTER).groups()
    (service,) = [s for s in resources("Service") if s["metadata"]["name"] == name]
    assert service["metadata"]["namespace"] == namespace
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}


def test_the_mlflow_server_allows_its_in_cluster_hosts_and_keeps_credentials_out_of_its_args():
    container, args = mlflow_container(), mlflow_args()
    assert container["command"] == ["mlflow", "server"]
    hosts = (args.get("--allowed-hosts") or "").split(",")
    assert MLFLOW_IN_CLUSTER in hosts and "*" not in hosts, hosts
    assert args.get("--host") == "0.0.0.0" and "--serve-artifacts" in args
    assert "--backend-store-uri" not in args and "--artifacts-destination" not in args, \
        "the database URI (with its password) belongs in the Secret"
    from_secret = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"} <= from_secret, from_secret
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe


def test_no_credentials_in_plain_text():
    assert not resources("Secret"), "Secrets are made from local files, never kept in deploy/"
    literal = [(f, e["name"]) for f, e in env_entries() if CREDENTIAL_NAME.search(e["name"]) and "value" in e]
    assert not literal, literal
    for path in sorted(DEPLOY.iterdir()):
        if path.is_file() and not path.name.endswith(".lock"):
            text = path.read_text()
            assert not PASSWORD_IN_URI.search(text) and not AWS_KEY_ID.search(text), path.name


# ---------------------------------------------------------------- the MLflow server, for real

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, host: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """Port of `mlflow server` started with the Deployment's arguments, on 127.0.0.1 instead of
    0.0.0.0, a free port instead of 5000 and one worker process; SQLite and a local folder instead
    of the Secret's database and bucket."""
    folder, port = tmp_path_factory.mktemp("mlflow-server"), _free_port()
    args = {**mlflow_args(), "--host": "127.0.0.1", "--port": str(port), "--workers": "1"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # no URI of another test
    env.update(PATH=f"{pathlib.Path(sys.executable).parent}:{env.get('PATH', '')}",
               MLFLOW_BACKEND_STORE_URI=f"sqlite:///{folder / 'mlflow.db'}",
               MLFLOW_ARTIFACTS_DESTINATION=str(folder / "artifacts"))
    log = folder / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *(k if v is None else f"{k}={v}" for k, v in args.items())],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(server, port, log)
        yield port
    finally:
        _stop(server)


def _wait_healthy(server: subprocess.Popen, port: int, log: pathlib.Path):
    deadline = time.monotonic() + 300  # the first start migrates the database; the machine may be busy
    while True:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if _get(port, "/health", "localhost") == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)


def _stop(server: subprocess.Popen):
    """Stops the server and the worker processes it started (its own process group)."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)


API = "/api/2.0/mlflow/experiments/search?max_results=1"


@pytest.mark.parametrize("host", [MLFLOW_IN_CLUSTER, "mlflow.mlflow.svc.cluster.local:5000", "localhost:5000"])
def test_the_mlflow_server_answers_api_calls_for_the_allowed_hosts(mlflow_server, host):
    assert _get(mlflow_server, API, host) == 200


def test_the_mlflow_server_refuses_api_calls_for_other_hosts(mlflow_server):
    # The negative control: the server does check the Host header (403, DNS-rebinding protection).
    assert _get(mlflow_server, API, "attacker.example.com:5000") == 403


# ---------------------------------------------------------------- `ray up` on VMs

def test_the_ray_up_config_is_valid_for_the_installed_ray():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((pathlib.Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(documents(RAY_UP)[0], schema)


def test_the_ray_up_cluster_uses_the_token_and_the_image_of_the_kustomization():
    config = documents(RAY_UP)[0]
    image = kustomize_images()["raygram"]
    assert config["docker"]["image"] == f"{image['newName']}:{image['newTag']}"
    run_options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options, run_options
    home = dockerfile_env(DEPLOY / "Dockerfile")["HOME"]
    assert config["file_mounts"].get(f"{home}/.ray/auth_token") == "~/.ray/auth_token", config["file_mounts"]


def test_the_ray_up_gpu_workers_start_from_zero_and_nothing_is_installed_at_start_up():
    config = documents(RAY_UP)[0]
    types = config["available_node_types"]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 for t in workers)
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert config[key] == [], key   # left out, Ray's AWS defaults pip-install into the image


# ---------------------------------------------------------------- the images

def dockerfile(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in joined.splitlines() if ln.strip()]


def dockerfile_env(path: pathlib.Path) -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile(path):
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def first(steps, predicate) -> int:
    return next(i for i, step in enumerate(steps) if predicate(*step))


def apt_packages(steps) -> set[str]:
    packages = set()
    for instruction, args in steps:
        for command in re.findall(r"apt-get install([^&;|]*)", args) if instruction == "RUN" else []:
            packages |= {w for w in command.split() if not w.startswith("-")}
    return packages


@pytest.mark.parametrize("name", ["Dockerfile", "mlflow.Dockerfile"])
def test_images_run_as_a_non_root_user_without_git(name):
    steps = dockerfile(DEPLOY / name)
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert "git" not in apt_packages(steps)
    locks = [w for i, args in steps if i == "RUN" for w in args.split() if w.endswith(".lock")]
    assert locks and all("--require-hashes" in a for i, a in steps if i == "RUN" and ".lock" in a)
    for lock in locks:
        assert (DEPLOY / pathlib.Path(lock).name).is_file(), lock


def test_the_dependency_layer_is_built_before_the_code():
    steps = dockerfile(DEPLOY / "Dockerfile")
    install = first(steps, lambda i, a: i == "RUN" and CUDA_LOCK.name in a)
    code = first(steps, lambda i, a: i == "COPY" and re.search(r"(^|\s)raygram(/|\s)", a))
    assert install < code
    copied_before = [a for i, a in steps[:install] if i == "COPY"]
    assert all(w.endswith(".lock") for a in copied_before for w in a.split()[:-1]), copied_before
    package = first(steps, lambda i, a: i == "RUN" and re.search(r"pip install .*--no-deps.* \.($|\s)", a))
    assert package > code


def test_pip_is_upgraded_before_the_cuda_install():
    steps = dockerfile(DEPLOY / "Dockerfile")
    upgrade = first(steps, lambda i, a: i == "RUN" and NODEPS_LOCK.name in a)
    assert upgrade < first(steps, lambda i, a: i == "RUN" and CUDA_LOCK.name in a)
    assert lock_versions(NODEPS_LOCK)["pip"] >= Version("24")


def test_the_image_records_its_git_commit_and_has_what_kuberay_probes_need():
    steps = dockerfile(DEPLOY / "Dockerfile")
    assert ("ARG", "GIT_COMMIT=unknown") in steps or ("ARG", "GIT_COMMIT") in steps
    assert dockerfile_env(DEPLOY / "Dockerfile")["RAYGRAM_GIT_COMMIT"] in ("$GIT_COMMIT", "${GIT_COMMIT}")
    arg = first(steps, lambda i, a: i == "ARG" and a.startswith("GIT_COMMIT"))
    assert arg > first(steps, lambda i, a: i == "RUN" and CUDA_LOCK.name in a), "a new commit would rebuild the deps"
    assert "wget" in apt_packages(steps), "KubeRay's probes run wget in the Ray containers"


# ---------------------------------------------------------------- the locks

def lock_versions(path: pathlib.Path) -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", path.read_text(), re.M)
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_the_cuda_lock_holds_every_dependency_of_pyproject_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = lock_versions(CUDA_LOCK)
    for line in project["dependencies"] + project["optional-dependencies"]["cuda"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned and requirement.specifier.contains(pinned[name], prereleases=True), \
            f"{line}: lock has {pinned.get(name)}; rerun deploy/lock.sh"
    text = CUDA_LOCK.read_text()
    assert text.count("--hash=sha256:") >= len(pinned)


def test_the_cuda_lock_brings_the_nvidia_libraries():
    # pip 23.2 dropped them: JAX would then run on the CPU of a GPU node without a word.
    pinned = lock_versions(CUDA_LOCK)
    assert "jax-cuda12-plugin" in pinned and pinned["jax-cuda12-plugin"] == pinned["jaxlib"]
    for library in ("nvidia-cublas-cu12", "nvidia-cudnn-cu12", "nvidia-cusolver-cu12", "nvidia-nccl-cu12"):
        assert library in pinned, library
    assert "tensorflow" not in pinned


def test_the_nodeps_lock_matches_the_build_backend_and_neural_tangents():
    pinned = lock_versions(NODEPS_LOCK)
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for line in build:
        requirement = Requirement(line)
        assert requirement.specifier.contains(pinned[canonicalize_name(requirement.name)]), line
    assert pinned["neural-tangents"] == Version("0.6.5")
