"""The package's shape: the public API, the version, and an import graph that flows one way.

Layers, lowest first: errors, config, the neural-tangents shim, kernels, data, store,
build, solve, experiment, cli. A module may import its own layer or lower ones, never a
higher one; no module imports a private (`_`-prefixed) name of another module; the graph
of raygram modules (function-local imports included) has no cycle.
"""
import ast
import pathlib
import subprocess
import sys

import pytest

import raygram

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raygram"
LAYERS = ["errors", "config", "_neural_tangents", "kernels", "data", "store", "build", "solve", "experiment",
          "cli"]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, list[str]]]:
    """(imported raygram module, imported names) of every import statement in a module, nested ones too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "raygram"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "raygram":
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            found += [(m, []) for m in submodules]
            names = [n for n in names if f"{module}.{n}" not in MODULES]
            if names or not submodules:
                found.append((module, names))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)  # raygram/__init__ sits on top


def test_public_api_exposes_the_pipeline_and_the_errors():
    for name in ("build_gram", "GramStore", "predict", "run_experiment", "load_config", "TilingOptions",
                 "SolverOptions", "RaygramError", "ConfigError", "StoreError", "FingerprintMismatch", "TileFailed",
                 "LeaseLost", "IllConditioned", "NotConverged"):
        assert name in raygram.__all__, name
    for name in raygram.__all__:
        assert getattr(raygram, name) is not None, name
    from raygram import errors

    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type):
            assert issubclass(value, errors.RaygramError) and value.exit_code in (1, 2), name
    assert issubclass(raygram.ConfigError, ValueError) and issubclass(raygram.IllConditioned, Exception)
    with pytest.raises(AttributeError, match="no attribute 'scheduler'"):
        raygram.scheduler  # noqa: B018


def test_version_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "raygram.cli", "--version"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == f"raygram {raygram.__version__}", out
    assert raygram.__version__[0].isdigit()


def test_importing_raygram_loads_no_heavy_dependency():
    code = ("import sys, raygram, raygram.config, raygram.errors; "
            "print([m for m in ('jax', 'ray', 'mlflow', 'dask', 'zarr') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"


def test_every_module_belongs_to_a_layer():
    for module in MODULES:
        parts = module.split(".")
        assert len(parts) == 1 or parts[1] in LAYERS, f"{module} is outside the layers {LAYERS}"


def test_no_module_imports_a_higher_layer():
    wrong = [f"{module} imports {target}" for module, path in MODULES.items() for target, _ in _imports(module, path)
             if _layer(target) > _layer(module)]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_a_private_name_of_another():
    wrong = [f"{module} imports {name} from {target}" for module, path in MODULES.items()
             for target, names in _imports(module, path) for name in names
             if name.startswith("_") and target != module]
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    graph = {module: {target for target, _ in _imports(module, path) if target in MODULES and target != module}
             for module, path in MODULES.items()}
    # Importing a.b.c also runs a/b/__init__: a dependency, unless it is a package the module is in
    # (a package's own modules import each other while its __init__ runs).
    for module in list(graph):
        for target in list(graph[module]):
            parts = target.split(".")
            parents = {".".join(parts[:i]) for i in range(2, len(parts))}
            graph[module] |= {p for p in parents if not (module + ".").startswith(p + ".")}
    state, cycle = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycle, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycle)
