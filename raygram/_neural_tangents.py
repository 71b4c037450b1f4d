"""Import neural-tangents without its TensorFlow helpers.

`neural_tangents/__init__.py` imports `neural_tangents.experimental`, which loads
TensorFlow and tf2jax (about 2 GB installed, ~6 s and hundreds of MB per process)
only for `empirical_ntk_fn_tf`. raygram installs neural-tangents without them (see
README, "Why no TensorFlow") and never needs them, so before the first import we
register a lazy stand-in for that submodule: every Ray worker then imports only the
JAX parts. Touching an attribute of `nt.experimental` imports the real module, so
users who installed TensorFlow (`pip install raygram[tensorflow]`) lose nothing.
"""
from __future__ import annotations

import importlib
import sys
import types

_EXPERIMENTAL = "neural_tangents.experimental"


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


if "neural_tangents" not in sys.modules and _EXPERIMENTAL not in sys.modules:
    sys.modules[_EXPERIMENTAL] = _LazyExperimental(_EXPERIMENTAL)

try:
    import neural_tangents as nt  # noqa: E402
    from neural_tangents import stax  # noqa: E402
except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
    if e.name != "neural_tangents":
        raise
    raise ImportError(
        "raygram needs neural-tangents 0.6.5, installed without its TensorFlow extras: "
        "pip install --no-deps neural-tangents==0.6.5"
    ) from e

__all__ = ["nt", "stax"]
