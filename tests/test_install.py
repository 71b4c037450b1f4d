"""Packaging promises: no TensorFlow on import, the two JAX lines and the CLI."""
import pathlib
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

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


def jax_specifiers(requirements):
    """{name: SpecifierSet} of the jax and jaxlib entries of a requirement list."""
    found = (Requirement(r) for r in requirements)
    return {r.name: r.specifier for r in found if r.name in ("jax", "jaxlib")}


def test_jax_lines_base_allows_both_and_the_extras_choose_one():
    # pip cannot lower a base requirement from an extra: the base must admit both tested
    # lines, `test` (the README's install) picks 0.5.3's and `jax-latest` 0.10's.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    lines = {"base": jax_specifiers(project["dependencies"]), "test": jax_specifiers(extras["test"]),
             "jax-latest": jax_specifiers(extras["jax-latest"])}
    # The base also admits the untested lines between (the shim supplies only what is missing).
    admitted = {"base": {"0.5.3", "0.6.0", "0.10.2"}, "test": {"0.5.3"}, "jax-latest": {"0.10.2"}}
    for where, specs in lines.items():
        assert set(specs) == {"jax", "jaxlib"}, where
        for spec in specs.values():
            assert {v for v in ("0.5.3", "0.6.0", "0.10.2", "0.11.0") if v in spec} == admitted[where], (where, spec)
    # `test-tools` is `test` without the JAX pin, for the jax-latest environment.
    assert extras["test"] == ["raygram[test-tools]", *(r for r in extras["test"] if r.startswith("jax"))]


def test_this_environment_runs_a_tested_jax_line():
    import jax
    import jaxlib

    assert jax.__version__ == jaxlib.__version__
    assert Version(jax.__version__).release[:2] in ((0, 5), (0, 10)), jax.__version__


def test_cli_lists_its_commands():
    out = run("-m", "raygram.cli", "--help")
    assert out.returncode == 0
    for command in ("run", "solve", "build", "status", "verify", "check-convergence"):
        assert f"  {command} " in out.stdout, out.stdout


def test_cli_rejects_unknown_commands():
    out = run("-m", "raygram.cli", "bulid")
    assert out.returncode == 2 and "invalid choice: 'bulid'" in out.stderr
