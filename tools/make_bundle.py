"""Make the offline bundle that runs raygram's kernels where only JAX is installed.

A GPU machine may come with a current JAX (any Python from 3.11) and no package index.
Everything else raygram's kernels and `benchmarks/gpu.py` need is pure Python and fits
in a bundle of a few MiB, importable from `sys.path` / `PYTHONPATH`:

- raygram itself, copied from this checkout (its `.py` files and a minimal
  `dist-info`, so that `raygram.__version__` is right);
- neural-tangents 0.6.5 (its package only, not the stray top-level `tests` and
  `examples` its wheel installs), frozendict and PyYAML, copied from the distributions
  installed in the environment that runs this script (the versions its tests ran with;
  nothing is downloaded, so the script works offline). PyYAML's optional C loader is
  left out: `yaml` falls back to its pure-Python parser;
- `benchmarks/gpu.py` and the two benchmarks whose models it measures, as the package
  `raygram_benchmarks`, and a `__main__.py` that runs `gpu.py`.

Nothing compiled goes in (a bundled distribution with an extension module other than
PyYAML's optional one is refused), so the bundle does not depend on the Python version
or platform it was made on. JAX and its own requirements (jaxlib, numpy, scipy,
ml_dtypes, opt_einsum) must be on the target; Ray and zarr are optional (the
benchmark's scheduler comparison needs them).

    python tools/make_bundle.py dist/raygram-gpu.zip    # a zip (by the suffix), or a folder
    python3 raygram-gpu.zip --help                      # on the target: runs benchmarks/gpu.py
    PYTHONPATH=raygram-gpu.zip python3 -c "import raygram.kernels"
"""
from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import shutil
import sys
import tempfile
import tomllib
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
# distribution -> the import packages of it that the bundle needs
DISTRIBUTIONS = {"neural-tangents": ("neural_tangents",), "frozendict": ("frozendict",), "PyYAML": ("yaml",)}
# Compiled modules that their package only tries to import (and works without).
OPTIONAL_EXTENSIONS = {"yaml": "_yaml"}
EXTENSION_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
SKIPPED_METADATA = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
BENCHMARKS = ("gpu.py", "kernel_speed.py", "so3_speed.py")
# `python3 bundle.zip ...` runs benchmarks/gpu.py; sys.argv[0] stays the bundle, which gpu.py reruns.
ENTRY_POINT = "import runpy\n\nrunpy.run_module('raygram_benchmarks.gpu', run_name='__main__')\n"


def _copy(source: pathlib.Path, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _is_extension(path: pathlib.PurePath) -> bool:
    return path.name.endswith(EXTENSION_SUFFIXES)


def add_raygram(folder: pathlib.Path) -> str:
    """Copy raygram's `.py` files from this checkout and write its dist-info; returns its version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for source in sorted((ROOT / "raygram").rglob("*.py")):
        _copy(source, folder / source.relative_to(ROOT))
    info = folder / f"raygram-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: raygram\nVersion: {project['version']}\n"
                                   f"Summary: {project['description']}\n")
    return project["version"]


def add_distribution(folder: pathlib.Path, name: str, packages: tuple[str, ...]) -> str:
    """Copy the pure-Python files of `packages` of installed distribution `name`; returns its version.

    Raises:
      SystemExit: the distribution is not installed, or one of its packages is compiled.
    """
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"make_bundle: {name} is not installed in {sys.prefix}; install the project first")
    for file in dist.files or ():
        top = file.parts[0]
        if "__pycache__" in file.parts or not (top in packages or top.endswith(".dist-info")):
            continue
        if top.endswith(".dist-info") and file.name in SKIPPED_METADATA:
            continue
        if _is_extension(file):
            if not file.name.startswith(OPTIONAL_EXTENSIONS.get(top, "\0")):
                raise SystemExit(f"make_bundle: {name} is not pure Python ({file}); it cannot go in the bundle")
            continue
        _copy(pathlib.Path(dist.locate_file(file)), folder / file)
    return dist.version


def make(folder: pathlib.Path) -> dict[str, str]:
    """Fill the empty folder `folder` with the bundle; returns {distribution: version}."""
    versions = {"raygram": add_raygram(folder)}
    for name, packages in DISTRIBUTIONS.items():
        versions[name] = add_distribution(folder, name, packages)
    for name in BENCHMARKS:
        _copy(ROOT / "benchmarks" / name, folder / "raygram_benchmarks" / name)
    (folder / "raygram_benchmarks" / "__init__.py").write_text('"""benchmarks/ of raygram\'s checkout."""\n')
    (folder / "__main__.py").write_text(ENTRY_POINT)
    return versions


def write_zip(folder: pathlib.Path, target: pathlib.Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="the bundle: a path ending in .zip, or a new folder")
    args = parser.parse_args(argv)
    out = args.out
    if out.exists():
        raise SystemExit(f"make_bundle: {out} exists; choose a new path")
    if not out.parent.is_dir():
        raise SystemExit(f"make_bundle: the folder {out.parent} does not exist")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        folder = pathlib.Path(tmp) / "bundle"
        folder.mkdir()
        versions = make(folder)
        if out.suffix == ".zip":
            write_zip(folder, out)
        else:
            folder.rename(out)
    files = [out] if out.is_file() else [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"bundle {out}: {size / 2**20:.2f} MiB, "
          + ", ".join(f"{name} {version}" for name, version in versions.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
