"""Import neural-tangents without its TensorFlow helpers, on old and current JAX.

Two things stand between `import neural_tangents` (0.6.5, its last release) and
raygram, and `prepare()` deals with both before neural-tangents is first imported:

- TensorFlow. `neural_tangents/__init__.py` imports `neural_tangents.experimental`,
  which loads TensorFlow and tf2jax (about 2 GB installed, ~6 s and hundreds of MB
  per process) only for `empirical_ntk_fn_tf`. raygram installs neural-tangents
  without them (see README, "Why no TensorFlow") and never needs them, so a lazy
  stand-in for that submodule is registered: every Ray worker then imports only the
  JAX parts. Touching an attribute of `nt.experimental` imports the real module, so
  users who installed TensorFlow (`pip install raygram[tensorflow]`) lose nothing.
- JAX 0.6 and later. neural-tangents imports names that JAX has since moved or
  removed: the module `jax.util` (`safe_map`, `safe_zip`), `jax.core.Jaxpr`,
  `JaxprEqn`, `Literal`, `Primitive` and `Var` (now in `jax.extend.core`) and
  `jax.interpreters.ad.zeros_like_p` (a primitive JAX no longer emits, which
  neural-tangents only keys a table of derivative rules with). Each is supplied only
  when missing, right before the first `import neural_tangents`, by a meta-path hook;
  on JAX 0.5 nothing is touched. The analytic kernels (`stax`), `batch`, `predict`
  and the default empirical NTK then run unchanged; the experimental
  structured-derivatives NTK (`implementation=3`) needs more of JAX's old
  internals and is not supported there.
- jaxlib 0.10's CPU code generator for AVX-512 crashes the process (SIGSEGV) when a
  jit-compiled float64 kernel pools after a nonlinearity (e.g. Conv-Relu-AvgPool or
  GlobalAvgPool in neural-tangents; reproduced on an AVX-512 AMD EPYC, fine with
  AVX2 code or on JAX 0.5). On JAX 0.6 and later, on a CPU with AVX-512, the same
  hook adds `--xla_cpu_max_isa=AVX2` to `XLA_FLAGS` unless the user set that flag
  (it takes effect if JAX has not started its CPU backend yet, as in Ray workers).

Nothing here imports JAX or neural-tangents until neural-tangents itself is
imported, so `import raygram.data` stays light.
"""
from __future__ import annotations

import importlib
import importlib.abc
import os
import sys
import types
import warnings

_EXPERIMENTAL = "neural_tangents.experimental"
# Names neural-tangents 0.6.5 imports from `jax.core` that JAX 0.6 moved to `jax.extend.core`.
_MOVED_TO_EXTEND_CORE = ("Jaxpr", "JaxprEqn", "Literal", "Primitive", "Var")


class _LazyExperimental(types.ModuleType):
    """Placeholder for `neural_tangents.experimental` that imports it on first use."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        del sys.modules[_EXPERIMENTAL]
        try:
            real = importlib.import_module(_EXPERIMENTAL)
        except ImportError as e:
            sys.modules[_EXPERIMENTAL] = self
            raise ImportError(
                f"neural_tangents.experimental.{name} needs TensorFlow and tf2jax, which raygram "
                "does not install; use `pip install 'raygram[tensorflow]'` to get them."
            ) from e
        parent = sys.modules.get("neural_tangents")
        if parent is not None:
            parent.experimental = real
        return getattr(real, name)


def _safe_map(f, *args):
    """`jax.util.safe_map` as JAX 0.5 had it: `map` into a list, all arguments of one length."""
    return [f(*items) for items in zip(*args, strict=True)]


def _safe_zip(*args):
    """`jax.util.safe_zip` as JAX 0.5 had it: `zip` into a list, all arguments of one length."""
    return list(zip(*args, strict=True))


def _missing(module: types.ModuleType, name: str) -> bool:
    with warnings.catch_warnings():  # JAX 0.5 warns on the deprecated names it still has
        warnings.simplefilter("ignore", DeprecationWarning)
        return not hasattr(module, name)


def _avoid_avx512_codegen() -> None:
    """Cap XLA's CPU code at AVX2 on JAX >= 0.6 where the CPU has AVX-512 (see the module docstring)."""
    import jax

    flags = os.environ.get("XLA_FLAGS", "")
    if jax.__version_info__ < (0, 6) or "xla_cpu_max_isa" in flags:
        return
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:  # not Linux: no known crash to avoid
        return
    if avx512:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_max_isa=AVX2").strip()


def _supply_moved_jax_names() -> None:
    """Give JAX what neural-tangents 0.6.5 imports from it, where this JAX lacks it."""
    import jax
    import jax.core
    from jax.interpreters import ad

    _avoid_avx512_codegen()

    try:
        importlib.import_module("jax.util")
    except ImportError:
        util = types.ModuleType("jax.util", "raygram's stand-in for the module JAX 0.6 removed.")
        util.safe_map, util.safe_zip = _safe_map, _safe_zip
        sys.modules["jax.util"] = jax.util = util
    moved = [name for name in _MOVED_TO_EXTEND_CORE if _missing(jax.core, name)]
    if moved or _missing(ad, "zeros_like_p"):
        import jax.extend.core as extend_core

        for name in moved:
            setattr(jax.core, name, getattr(extend_core, name))
        if _missing(ad, "zeros_like_p"):
            ad.zeros_like_p = extend_core.Primitive("zeros_like")


class _BeforeNeuralTangents(importlib.abc.MetaPathFinder):
    """Meta-path hook: supplies the moved JAX names when `neural_tangents` is first imported.

    It finds nothing itself (returns None), so the regular finders import the package.
    """

    done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "neural_tangents" and not self.done:
            type(self).done = True
            _supply_moved_jax_names()
        return None


def prepare() -> None:
    """Make `import neural_tangents` TensorFlow-free and JAX-current; cheap (imports nothing), idempotent.

    Runs when this module is imported, which `import raygram` does, so that user code
    may `from neural_tangents import stax` after importing raygram. Registers the
    lazy `neural_tangents.experimental` and a meta-path hook that, on the first
    `import neural_tangents`, supplies the JAX names neural-tangents 0.6.5 needs and
    this JAX lacks (none on JAX 0.5).
    """
    if "neural_tangents" in sys.modules:
        return
    if _EXPERIMENTAL not in sys.modules:
        sys.modules[_EXPERIMENTAL] = _LazyExperimental(_EXPERIMENTAL)
    if not any(isinstance(finder, _BeforeNeuralTangents) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeNeuralTangents())


prepare()


def x64(enabled: bool = True):
    """Context manager in which JAX computes with 64-bit types on (`enabled`) or off, on any tested JAX.

    `jax.enable_x64(enabled)` where JAX has it (the current API), else JAX 0.5's
    `jax.experimental.enable_x64()` / `disable_x64()`, which later JAX removed.

    Args:
      enabled: True for float64 (x64 on), False for float32 (x64 off).

    Returns:
      A context manager; ``with x64(False): ...`` traces and runs its body in float32.
    """
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(enabled)
    from jax.experimental import disable_x64, enable_x64

    return enable_x64() if enabled else disable_x64()


def __getattr__(name: str):
    """`nt` and `stax`, imported on first use (PEP 562)."""
    if name not in ("nt", "stax"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import neural_tangents
        from neural_tangents import stax
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
        if e.name != "neural_tangents":
            raise
        raise ImportError(
            "raygram needs neural-tangents 0.6.5, installed without its TensorFlow extras: "
            "pip install --no-deps neural-tangents==0.6.5"
        ) from e
    globals().update(nt=neural_tangents, stax=stax)
    return globals()[name]


__all__ = ["nt", "stax", "prepare", "x64"]
