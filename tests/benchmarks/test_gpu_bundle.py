"""The offline GPU bundle (tools/make_bundle.py) and the dry run of benchmarks/gpu.py.

A GPU machine may have JAX and nothing else. These tests make the bundle and run the
benchmark from it in a Python whose `sys.path` holds only the bundle and this
environment's JAX with its own requirements (`python -S`: no site-packages; JAX through
a folder of links to exactly its distributions), on the CPU, with whichever JAX runs
the tests (CI runs them on JAX 0.5.3 and on the newest, 0.10).
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ["CNN-GAP", "C4-invariant", "D4-invariant", "C4-general", "D4-general", "SO3-pairs-L2", "SO3-relative-L2"]
TIMEOUT = 1800  # seconds; a quick run takes well under a minute of CPU, but CI machines are shared


def make_bundle(out: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "make_bundle.py"), str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("bundle") / "raygram-gpu.zip"
    made = make_bundle(out)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"bundle {out}: "), made.stdout
    return out


def distribution_closure(*names: str) -> set[str]:
    """Names of the installed distributions `names` need at run time (extras left out)."""
    seen, todo = set(), list(names)
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group() for r in dist.requires or () if "extra ==" not in r]
    return seen


@pytest.fixture(scope="module")
def jax_only(tmp_path_factory) -> pathlib.Path:
    """A folder of links to JAX and its requirements only: what a bare GPU machine has."""
    folder = tmp_path_factory.mktemp("jax-only")
    for name in distribution_closure("jax", "jaxlib"):
        dist = importlib.metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files if f.parts[0] != ".."}:
            if not (folder / top).exists():
                (folder / top).symlink_to(pathlib.Path(dist.locate_file(top)))
    return folder


def isolated(jax_only, *args) -> subprocess.CompletedProcess:
    """Run this interpreter with sys.path = [args' script or bundle, the JAX folder, the stdlib]."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JAX_", "XLA_"))}
    env.update(PYTHONPATH=str(jax_only), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-S", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=jax_only.parent, timeout=TIMEOUT)


def rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """{(model, dtype): fields} of the benchmark's table."""
    return {(f[0], f[1]): f for f in map(str.split, stdout.splitlines()) if len(f) == 8 and f[0] in MODELS}


def test_bundle_is_small_and_pure_python(bundle):
    names = zipfile.ZipFile(bundle).namelist()
    assert {"__main__.py", "raygram/__init__.py", "raygram/kernels/so3_relative.py", "neural_tangents/stax.py",
            "frozendict/__init__.py", "yaml/__init__.py", "raygram_benchmarks/gpu.py"} <= set(names)
    assert not [n for n in names if n.endswith((".so", ".pyd", ".dylib"))]
    assert not [n for n in names if n.split("/")[0] in ("tests", "examples")]  # neural-tangents' strays
    assert bundle.stat().st_size < 4 * 2**20  # "a few MiB" to copy onto a machine without an index


def test_quick_run_from_the_bundle_with_only_jax(bundle, jax_only):
    out = isolated(jax_only, bundle, "--quick")
    assert out.returncode == 0, out.stderr
    origin = dict(kv.split("=", 1) for kv in out.stdout.split("imported: ", 1)[1].splitlines()[0].split())
    assert origin["raygram"] == f"{bundle}/raygram" and origin["neural_tangents"] == f"{bundle}/neural_tangents"
    assert pathlib.Path(origin["jax"]).parent == jax_only
    table = rows(out.stdout)
    assert set(table) == {(m, d) for m in MODELS for d in ("float32", "float64")}, out.stdout
    for (model, dtype), (_, _, tile, seconds, mib, source, gflop, share) in table.items():
        assert tile == "2" and float(seconds) > 0 and float(mib) >= 0 and source == "xla"
        assert float(gflop.removeprefix(">=")) > 0 and share == "n/a"  # no peak FLOP rate on CPU
    # Each entry is NNGP and NTK of one pair: an 8-element D4 recursion costs more than a CNN's,
    # even counted as a lower bound (">=": XLA counts the body of its block loop once).
    gflop = {model: float(table[model, "float64"][6].removeprefix(">=")) for model in ("D4-general", "CNN-GAP")}
    assert gflop["D4-general"] > gflop["CNN-GAP"], out.stdout
    assert "scheduler: skipped (No module named 'ray')" in out.stdout


def test_isolated_rows_rerun_the_bundle_in_child_processes(bundle, jax_only):
    out = isolated(jax_only, bundle, "--quick", "--isolate", "yes", "--models", "SO3-pairs-L2",
                   "--dtypes", "float32", "--tiles", "1", "2", "--no-ray")
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines() if line.startswith("SO3-pairs-L2")]
    assert [fields[:3] for fields in lines] == [["SO3-pairs-L2", "float32", "1"], ["SO3-pairs-L2", "float32", "2"]]


def test_a_folder_bundle_imports_raygram_and_neural_tangents_from_itself(tmp_path, jax_only):
    folder = tmp_path / "bundle"
    assert make_bundle(folder).returncode == 0
    probe = ("import raygram, raygram.kernels, neural_tangents, sys\n"
             "print(raygram.__version__, raygram.__file__, neural_tangents.__file__, 'tensorflow' in sys.modules)")
    out = isolated(jax_only, "-c", f"import sys; sys.path.insert(0, {str(folder)!r})\n{probe}")
    assert out.returncode == 0, out.stderr
    version, raygram_file, nt_file, tensorflow = out.stdout.split()
    assert version == importlib.metadata.version("raygram") and tensorflow == "False"
    assert raygram_file.startswith(str(folder)) and nt_file.startswith(str(folder))


def test_make_bundle_refuses_an_existing_path_with_one_line(tmp_path):
    out = make_bundle(tmp_path)
    assert out.returncode == 1 and out.stderr == f"make_bundle: {tmp_path} exists; choose a new path\n"
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_one_error_line():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--models", "C8-general"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines()[-1].startswith("gpu.py: error: unknown model(s) C8-general; choose from CNN-GAP")


def test_scheduler_comparison_builds_the_same_gram_on_ray(ray_address):
    pytest.importorskip("ray")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick", "--models", "CNN-GAP",
                          "--dtypes", "float64", "--ray-address", ray_address],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "scheduler: C4 GCNN 8 points 6x6x1 float64 nngp+ntk, tile 2, 10 tiles" in out.stdout, out.stdout
    build = next(line for line in out.stdout.splitlines() if line.startswith("build_gram (Ray)")).split()
    # One CPU actor without GPUs; the stored Gram equals the in-process tiles to float64
    # round-off (the same compiled kernel on the same inputs; only the store's copy lies between).
    assert build[2] == "1" and float(build[-1]) <= 1e-12
