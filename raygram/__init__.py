"""raygram: exact infinite-width NTK/NNGP kernels of equivariant networks, at scale.

The pipeline, one subpackage per stage, data flowing one way:

    config (config.py) -> data (data/) -> kernels (kernels/) -> tile plan and store (store/)
    -> builds on Ray actors (build/) -> kernel regression (solve/) -> experiments and
    MLflow (experiment/) -> command line (cli/)

The public API:

    import raygram
    config = raygram.load_config("configs/quickstart.yaml")
    report = raygram.build_gram("gram.zarr", architecture, x_train, x_test, tiling=config.tiling)
    out = raygram.predict(raygram.GramStore("gram.zarr", read_only=True), y_train, config.solver)
    result = raygram.run_experiment(config)

Every error raised on purpose is a `raygram.errors.RaygramError`; bad input is a
`ConfigError` (also a ValueError).
"""
from importlib import import_module as _import_module
from importlib import metadata as _metadata

import raygram._neural_tangents  # noqa: F401 - makes `import neural_tangents` TensorFlow-free (imports nothing)

# name -> the module that defines it. Imported on first use (PEP 562), so that
# `import raygram.data` or a Ray worker does not load MLflow, dask and Ray's client.
_EXPORTS = {
    # builds and stores
    "build_gram": "raygram.build", "BuildReport": "raygram.build", "GramStore": "raygram.store",
    # solving
    "predict": "raygram.solve", "Prediction": "raygram.solve", "GramSource": "raygram.solve",
    # experiments and their config
    "run_experiment": "raygram.experiment", "load_config": "raygram.config", "Config": "raygram.config",
    "DataOptions": "raygram.config", "KernelOptions": "raygram.config", "TilingOptions": "raygram.config",
    "SolverOptions": "raygram.config", "TrackingOptions": "raygram.config", "RayOptions": "raygram.config",
    # errors
    **{name: "raygram.errors" for name in (
        "RaygramError", "ConfigError", "TrackingUnavailable", "StoreError", "FingerprintMismatch", "StoreLocked",
        "CorruptTile", "BuildError", "TileFailed", "WorkersLost", "CompileFailed", "LeaseLost", "SolveError",
        "IllConditioned", "NotConverged", "MemoryBudgetExceeded")},
}

try:
    __version__ = _metadata.version("raygram")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'raygram' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
