"""What a build computes: the kernel a store is filled with, as the driver and the actors see it.

A build's network is either data or Python:

- a layer list (`raygram.kernels.architecture`), which a YAML config, a store
  fingerprint and a Ray actor can all carry as it is;
- any neural-tangents `kernel_fn(x1, x2, get)`: a stax network of neural-tangents or
  raygram layers, its stax triple, the user's own callable, or ``{"python":
  "module:attribute"}`` naming one in an importable module (the config form).

`KernelSource` keeps the three views of it apart: `description` (JSON, recorded in the
store's fingerprint), `payload` (what is shipped to each actor once) and `kernel_fn()`
(the `kernel_fn` the actor compiles per tile shape).

A Python kernel has no spec to record, so its description is its name and a SHA-256 of
its traced computation: the jaxpr of `kernel_fn` on two float64 probe inputs of x_train's
feature shape (cross and ``x2=None``), with the values of its constants. The jaxpr text
names variables by order, not identity; the few object addresses that JAX prints (of
custom-derivative rules) are blanked, so the digest is the same in every process. A
changed network (another layer, W_std, a constant array) refuses the old store with
`FingerprintMismatch` on "architecture"; a changed width does not, as infinite-width
kernels do not depend on it.

Its payload is the kernel pickled with Ray's cloudpickle in the driver, once. Functions
and classes of modules that belong to no installed distribution (the user's own code:
a script, a module on PYTHONPATH, a notebook) are pickled by value, so Ray workers do
not need to import them; installed packages (neural-tangents, raygram, an installed
package of the user's) are pickled by reference and must be installed on every node,
as raygram itself must. Cached functions (`functools.lru_cache`, which neural-tangents'
GlobalSelfAttention uses inside its layer) travel as their function with an empty cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import re
import sys
import threading
import types
from importlib import metadata
from typing import Any, Callable

import numpy as np

from raygram._neural_tangents import x64
from raygram.errors import ConfigError
from raygram.kernels.architecture import (callable_network, canonical, check_outputs, network, python_reference,
                                          spec_json)

__all__ = ["KernelSource", "kernel_source", "traced_digest", "pickled"]

PROBE_KINDS = ("nngp", "ntk")  # the kinds a Python kernel is traced with, whatever a build stores
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")  # object addresses in reprs of custom-derivative rules
_LRU_CACHE = type(functools.lru_cache(maxsize=None)(len))  # the type of functools' cached functions
_PICKLING = threading.Lock()  # one registration of by-value modules at a time (cloudpickle's registry is global)


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """A build's kernel.

    Attributes:
      description: JSON-able record of the kernel for the store fingerprint: the
        canonical layer list, or for a Python kernel ``{"python": name, "jaxpr_sha256":
        digest}`` (`traced_digest`).
      payload: what the actors receive: the canonical layer list, or the `bytes` of the
        pickled kernel_fn (`pickled`).
    """

    description: Any
    payload: Any

    def kernel_fn(self) -> Callable:
        """The kernel function `kernel_fn(x1 (n1, ...), x2 (n2, ...) | None, get) -> per-kind (n1, n2)`."""
        if isinstance(self.payload, bytes):
            import ray.cloudpickle

            return ray.cloudpickle.loads(self.payload)
        return network(self.payload)[2]


def kernel_source(architecture, x_train=None, name: str | None = None) -> KernelSource:
    """The `KernelSource` of a build's network; a bad network fails here, before any work.

    Args:
      architecture: one of
        - a layer list, names or ``{name: {arguments}}`` (`raygram.kernels.architecture`);
        - a neural-tangents `kernel_fn(x1, x2, get)`: `x1` (n1, ...), `x2` (n2, ...) or
          None (then x1 against itself), `get` a tuple of kinds ("nngp", "ntk"); returns
          one (n1, n2) array per kind, in `get`'s order (a stax network's kernel_fn, e.g.
          ``stax.serial(...)[2]``, or the user's own callable);
        - a stax triple `(init_fn, apply_fn, kernel_fn)`;
        - ``{"python": "module:attribute"}``: such a kernel_fn or triple, imported.
      x_train: training inputs (N, ...features); a Python kernel is traced on two
        inputs of this feature shape. Not needed for a layer list.
      name: names a Python kernel in the store's fingerprint; required for a callable
        or triple. ``{"python": ...}`` is named by its "module:attribute", and a layer
        list by itself: for them `name` is not used.

    Returns:
      The `KernelSource`: description for the fingerprint, payload for the actors.

    Raises:
      ConfigError: a bad layer, module or attribute; a Python kernel without `name` or
        `x_train`, or one that cannot be traced, gives other than one output per input,
        or cannot be pickled (one line saying why).
    """
    reference = python_reference(architecture)
    if reference is None and callable_network(architecture) is None:
        spec = canonical(architecture)
        network(spec)
        return KernelSource(description=json.loads(spec_json(spec)), payload=spec)
    if reference is None and not (isinstance(name, str) and name.strip()):
        raise ConfigError("name= is required for a Python kernel_fn: it names the kernel in the store's fingerprint")
    label = reference or name
    kernel_fn = network(architecture)[2]
    if x_train is None:
        raise ConfigError(f"kernel {label!r}: x_train is needed to trace a Python kernel_fn")
    digest = traced_digest(kernel_fn, np.shape(x_train)[1:], label)
    return KernelSource(description={"python": label, "jaxpr_sha256": digest}, payload=pickled(kernel_fn, label))


def traced_digest(kernel_fn: Callable, input_shape: tuple[int, ...], label: str = "kernel_fn") -> str:
    """SHA-256 (hex) of a kernel's computation, the same in every process.

    Traces `kernel_fn(a, b, ("nngp", "ntk"))` and `kernel_fn(a, None, ...)` on float64
    inputs a, b of shape (2, *input_shape) (values play no part) and hashes both
    jaxprs' text, object addresses blanked, and the values of their constants.

    Args:
      kernel_fn: `kernel_fn(x1, x2, get)`.
      input_shape: the shape of ONE input, e.g. (H, W, C).
      label: the kernel's name in errors.

    Raises:
      ConfigError (one line): the kernel cannot be traced on such inputs, or does not give
        one (2, 2) array per kind.
    """
    import jax

    probe = jax.ShapeDtypeStruct((2,) + tuple(input_shape), np.float64)
    digest = hashlib.sha256()
    with x64(True):  # the same jaxpr whatever precision the caller's process runs in
        for args, fn in (((probe, probe), lambda a, b: kernel_fn(a, b, PROBE_KINDS)),
                         ((probe,), lambda a: kernel_fn(a, None, PROBE_KINDS))):
            try:
                closed = jax.make_jaxpr(fn)(*args)
            except Exception as e:  # noqa: BLE001 - whatever user code raises while tracing is bad input
                raise ConfigError(f"kernel {label!r} cannot be traced on inputs of shape {tuple(input_shape)} "
                                  f"(x2={'x' if len(args) == 2 else 'None'}): {type(e).__name__}: "
                                  f"{' '.join(str(e).split())}") from None
            check_outputs(closed.out_avals, PROBE_KINDS, f"kernel {label!r}")
            digest.update(_ADDRESS.sub("0x", str(closed)).encode())
            for const in closed.consts:
                value = np.asarray(const)
                digest.update(f"{value.dtype}{value.shape}".encode() + value.tobytes())
    return digest.hexdigest()


def pickled(kernel_fn: Callable, label: str = "kernel_fn") -> bytes:
    """`kernel_fn` pickled for the Ray workers, the user's own modules by value.

    Args:
      kernel_fn: any callable.
      label: the kernel's name in errors.

    Raises:
      ConfigError (one line): it cannot be pickled (e.g. it holds a lock or an open file).
    """
    try:
        with _PICKLING, _by_value(_user_modules()):
            return _dumps(kernel_fn)
    except Exception as e:  # noqa: BLE001 - pickling reports through many exception types
        raise ConfigError(f"kernel {label!r} cannot be pickled for the Ray workers: {type(e).__name__}: "
                          f"{' '.join(str(e).split())}") from None


def _dumps(value) -> bytes:
    """`ray.cloudpickle.dumps`, with `functools.lru_cache` wrappers pickled as their function and cache size.

    cloudpickle pickles a cached function by reference, which fails for one defined inside
    another (neural-tangents' GlobalSelfAttention caches its positional embeddings so);
    the worker gets the function with a new, empty cache.
    """
    import ray.cloudpickle

    class Pickler(ray.cloudpickle.CloudPickler):
        def reducer_override(self, obj):
            if isinstance(obj, _LRU_CACHE):
                parameters = obj.cache_parameters()
                return _lru_cached, (obj.__wrapped__, parameters["maxsize"], parameters["typed"])
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=ray.cloudpickle.DEFAULT_PROTOCOL).dump(value)
    return buffer.getvalue()


def _lru_cached(function: Callable, maxsize: int | None, typed: bool) -> Callable:
    """`function` behind a new `functools.lru_cache` (unpickling a cached function)."""
    return functools.lru_cache(maxsize=maxsize, typed=typed)(function)


@functools.lru_cache(maxsize=1)
def _installed_packages() -> frozenset[str]:
    """Top-level import names of the installed distributions (and of the standard library)."""
    return frozenset(metadata.packages_distributions()) | frozenset(sys.stdlib_module_names) | {"raygram"}


def _user_modules() -> list[types.ModuleType]:
    """Imported modules of no installed distribution: code the Ray workers may be unable to import."""
    import ray.cloudpickle

    installed = _installed_packages()
    registered = ray.cloudpickle.list_registry_pickle_by_value()
    return [module for name, module in list(sys.modules.items())
            if isinstance(module, types.ModuleType) and module.__name__ == name and getattr(module, "__file__", None)
            and name.partition(".")[0] not in installed and name not in ("__main__", "__mp_main__")
            and name not in registered]


@contextlib.contextmanager
def _by_value(modules: list[types.ModuleType]):
    """Pickle these modules' functions and classes by value while inside (cloudpickle's registry is global)."""
    import ray.cloudpickle

    for module in modules:
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in modules:
            ray.cloudpickle.unregister_pickle_by_value(module)
