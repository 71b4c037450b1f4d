"""Packaging promises: no TensorFlow on import, the JAX pin and the CLI."""
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_importing_raygram_kernels_does_not_load_tensorflow():
    probe = ("import sys, raygram.kernels, neural_tangents as nt; "
             "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
             "assert 'neural_tangents.stax' in sys.modules; print('ok')")
    out = run("-c", probe)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_experimental_is_loaded_on_demand_or_explains_itself():
    probe = ("import raygram.kernels, neural_tangents as nt\n"
             "try:\n    nt.experimental.empirical_ntk_fn_tf\nexcept ImportError as e:\n"
             "    print(e)\nelse:\n    print('loaded')")
    out = run("-c", probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loaded" or "raygram[tensorflow]" in out.stdout


def test_jax_is_pinned_below_0_6_for_neural_tangents():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("jax", "jaxlib"):
        spec = next(d for d in deps if d.split(">")[0].split("<")[0].split("=")[0] == name)
        assert "<0.6" in spec, spec
    import jax

    assert tuple(int(p) for p in jax.__version__.split(".")[:2]) < (0, 6)


def test_cli_lists_its_commands():
    out = run("-m", "raygram.cli", "--help")
    assert out.returncode == 0
    for command in ("run", "solve", "build", "status", "verify", "check-convergence"):
        assert f"  {command} " in out.stdout, out.stdout


def test_cli_rejects_unknown_commands():
    out = run("-m", "raygram.cli", "bulid")
    assert out.returncode == 2 and "unknown command 'bulid'" in out.stderr
