"""Networks described as data: a list of layer specs that becomes a stax triple.

A spec is what a YAML config, a store fingerprint and a Ray actor all carry instead of
a Python closure. Each entry is a layer name, or a one-key mapping from the name to its
keyword arguments:

    [{"LiftingConv": {"out_chan": 64, "filter_shape": [3, 3], "group": "C4"}},
     "Relu", "GroupPool", {"Dense": {"out_dim": 1}}]

Names are looked up in `raygram.kernels` (LiftingConv, GroupConv, GroupPool; S2Lifting,
SO3Conv, SO3Pool) and then in `neural_tangents.stax` (Conv, Dense, Relu, Erf, Flatten,
GlobalAvgPool, ...); the layers are combined with `raygram.kernels.serial`, the drop-in for
`stax.serial` (`raygram.kernels.so3_serial`, with its relative-rotation fast path, when
the network has SO(3) layers; `{"SO3Pool": {"quadrature": "relative"}}` picks that path's
O(L³) single quadrature instead of the exact default "pairs"). A last entry
`{"FullAugmentation": {"group": "C4"}}` makes the kernel that of the same network trained
with full data augmentation over the group (`raygram.kernels.augmented_kernel_fn`); the
finite network (init_fn, apply_fn) is unchanged. A first entry `AtomSum` makes the
rest a per-atom network shared by all atoms of a molecule and summed over them
(`raygram.kernels.atoms`: inputs are padded molecules (N, atoms, ..., channels + mask)).

A network written in Python instead, e.g. a neural-tangents stax network, is named by
``{"python": "module:attribute"}`` (YAML: ``architecture: {python: "mypackage.nets:kernel_fn"}``):
the attribute is imported and is either a `kernel_fn(x1, x2, get)` or a stax triple
`(init_fn, apply_fn, kernel_fn)`. `network` also takes such a callable or triple directly,
so `check_architecture` checks every form alike.
"""
from __future__ import annotations

import importlib
import json
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from raygram.errors import ConfigError

PLANAR_LAYERS = ("LiftingConv", "GroupConv", "GroupPool")
SO3_LAYERS = ("S2Lifting", "SO3Conv", "SO3Pool")
RAYGRAM_LAYERS = PLANAR_LAYERS + SO3_LAYERS
AUGMENTATION = "FullAugmentation"
ATOM_SUM = "AtomSum"
PYTHON = "python"  # the key of {"python": "module:attribute"}, a network defined in Python


def _json_value(value):
    """JSON-able form of a keyword value: tuples become lists, mapping keys sorted."""
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(value[k]) for k in sorted(value)}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"layer argument {value!r} ({type(value).__name__}) is not a number, string, list or mapping")


def _frozen(value):
    """Layer-call form of a keyword value: lists become tuples (stax wants tuple shapes)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def canonical(spec) -> list[dict[str, dict[str, Any]]]:
    """The spec in one normal form: a list of {name: {sorted kwargs}}; raises ValueError if malformed."""
    if isinstance(spec, (str, dict)) or not isinstance(spec, (list, tuple)) or not spec:
        raise ConfigError("architecture must be a non-empty list of layers, e.g. "
                         "[{'Conv': {'out_chan': 8, 'filter_shape': [3, 3]}}, 'Relu', 'Flatten', "
                         f"{{'Dense': {{'out_dim': 1}}}}]; got {spec!r}")
    layers = []
    for position, entry in enumerate(spec):
        if isinstance(entry, str):
            name, kwargs = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, kwargs), = entry.items()
            kwargs = {} if kwargs is None else kwargs
        else:
            raise ConfigError(f"architecture layer {position}: expected a layer name or a one-key "
                             f"mapping {{name: {{arguments}}}}, got {entry!r}")
        if not isinstance(kwargs, dict):
            raise ConfigError(f"architecture layer {position} ({name}): arguments must be a mapping, "
                             f"got {kwargs!r}")
        try:
            layers.append({str(name): _json_value(kwargs)})
        except TypeError as e:
            raise ConfigError(f"architecture layer {position} ({name}): {e}") from None
    return layers


def spec_json(spec) -> str:
    """Canonical JSON text of a spec (what a store fingerprint records)."""
    return json.dumps(canonical(spec), sort_keys=True, separators=(",", ":"))


def _layer_constructor(name: str):
    from raygram import kernels
    from raygram._neural_tangents import stax

    if name in RAYGRAM_LAYERS:
        return getattr(kernels, name)
    constructor = getattr(stax, name, None)
    if constructor is None or name.startswith("_") or not callable(constructor) or name == "serial":
        raise ConfigError(f"unknown layer {name!r}: use one of {', '.join(RAYGRAM_LAYERS)} or a "
                         "neural_tangents.stax layer (Conv, Dense, Relu, Erf, Flatten, GlobalAvgPool, ...), "
                         f"or a last {AUGMENTATION} entry")
    return constructor


def python_reference(spec) -> str | None:
    """The "module:attribute" of a ``{"python": "module:attribute"}`` spec; None for any other spec.

    Args:
      spec: an architecture in any form (`network`).

    Raises:
      ConfigError: a ``{"python": ...}`` mapping that is not one string "module:attribute".
    """
    if not isinstance(spec, Mapping) or PYTHON not in spec:
        return None
    reference = spec[PYTHON]
    module, _, attribute = reference.partition(":") if isinstance(reference, str) else ("", "", "")
    if len(spec) != 1 or not module.strip() or not attribute.strip() or ":" in attribute:
        raise ConfigError(f'a Python network must be {{python: "module:attribute"}}, e.g. '
                         f'{{python: "mypackage.nets:kernel_fn"}}; got {dict(spec)!r}')
    return reference


def callable_network(value) -> tuple[Callable | None, Callable | None, Callable] | None:
    """`(init_fn, apply_fn, kernel_fn)` of a stax triple or a bare `kernel_fn` (the others None); else None.

    Args:
      value: anything; a callable is taken for a `kernel_fn(x1, x2, get)`.
    """
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(callable(f) for f in value):
        return tuple(value)
    if callable(value):
        return None, None, value
    return None


def import_network(reference: str) -> tuple[Callable | None, Callable | None, Callable]:
    """`(init_fn, apply_fn, kernel_fn)` of the Python network "module:attribute" (imported here).

    Args:
      reference: "module:attribute", e.g. "mypackage.nets:kernel_fn"; the attribute may
        be dotted ("mypackage.nets:NETWORKS.myrtle") and is a `kernel_fn` or a stax triple.

    Raises:
      ConfigError: the module cannot be imported, it has no such attribute, or the
        attribute is neither callable nor a stax triple.
    """
    module_name, _, attribute = reference.partition(":")
    try:
        value = importlib.import_module(module_name.strip())
    except Exception as e:  # noqa: BLE001 - any failure of user code on import is bad input here
        raise ConfigError(f"python network {reference!r}: cannot import module {module_name!r}: "
                         f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    for part in attribute.strip().split("."):
        if not hasattr(value, part):
            raise ConfigError(f"python network {reference!r}: {getattr(value, '__name__', value)!r} "
                             f"has no attribute {part!r}")
        value = getattr(value, part)
    found = callable_network(value)
    if found is None:
        raise ConfigError(f"python network {reference!r}: {type(value).__name__} {value!r:.80} is not a "
                         "kernel_fn(x1, x2, get) nor a stax triple (init_fn, apply_fn, kernel_fn)")
    return found


class _Parsed(NamedTuple):
    """A layer list taken apart: its layers, each built alone, and the entries that wrap them."""

    layers: list[tuple[int, str, tuple]]  # (position in the spec, name, stax triple)
    augmentation: str | None  # the group of a last FullAugmentation entry
    atom_sum: bool  # a first AtomSum entry
    quadrature: str  # SO3Pool's quadrature


def _parse(spec) -> _Parsed:
    """Build each layer of a layer list alone (see `network`); ConfigError naming a bad one."""
    layers, augmentation, atom_sum, quadrature = [], None, False, "pairs"
    spec = canonical(spec)
    for position, entry in enumerate(spec):
        (name, kwargs), = entry.items()
        if name == ATOM_SUM:
            if position != 0 or len(spec) == 1 or kwargs:
                raise ConfigError(f"architecture layer {position} ({name}): takes no arguments and must be "
                                 "the first entry, followed by the per-atom network")
            atom_sum = True
            continue
        if name == AUGMENTATION:
            if position != len(spec) - 1 or position == 0:
                raise ConfigError(f"architecture layer {position} ({name}): full augmentation applies to "
                                 "the whole network; it must be the last entry, after at least one layer")
            if set(kwargs) != {"group"}:
                raise ConfigError(f"architecture layer {position} ({name}): takes exactly one argument, "
                                 f"group (e.g. C4), got {sorted(kwargs)}")
            if atom_sum:
                raise ConfigError(f"architecture layer {position} ({name}): planar augmentation does not "
                                 f"apply to a per-atom ({ATOM_SUM}) network")
            augmentation = kwargs["group"]
            continue
        if name == "SO3Pool" and "quadrature" in kwargs:
            kwargs = dict(kwargs)
            quadrature = kwargs.pop("quadrature")
        try:
            layers.append((position, name, _layer_constructor(name)(**_frozen(kwargs))))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"architecture layer {position} ({name}): {e}") from None
    return _Parsed(layers, augmentation, atom_sum, quadrature)


def network(spec):
    """`(init_fn, apply_fn, kernel_fn)` of the network an architecture describes.

    Args:
      spec: a layer list (see `canonical`); ``{"python": "module:attribute"}``
        (`import_network`); or, from Python, a stax triple or a `kernel_fn(x1, x2, get)`
        itself. A network given by its kernel alone has init_fn and apply_fn None.

    Raises:
      ConfigError naming the bad layer, module or attribute.
    """
    from raygram.kernels import augmented_kernel_fn, serial, so3_serial
    from raygram.kernels.atoms import AtomSum

    reference = python_reference(spec)
    if reference is not None:
        return import_network(reference)
    found = callable_network(spec)
    if found is not None:
        return found
    parsed = _parse(spec)
    layers = [layer for _, _, layer in parsed.layers]
    if any(name in SO3_LAYERS for _, name, _ in parsed.layers):
        try:
            init_fn, apply_fn, kernel_fn = so3_serial(*layers, quadrature=parsed.quadrature)
        except ValueError as e:
            raise ConfigError(f"architecture SO3Pool: {e}") from None
    else:
        init_fn, apply_fn, kernel_fn = serial(*layers)
    if parsed.atom_sum:
        return AtomSum(init_fn, apply_fn, kernel_fn)
    if parsed.augmentation is not None:
        try:
            kernel_fn = augmented_kernel_fn(kernel_fn, parsed.augmentation)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"architecture layer {len(canonical(spec)) - 1} ({AUGMENTATION}): {e}") from None
    return init_fn, apply_fn, kernel_fn


def _shapes(value) -> list[tuple[int, ...]]:
    """The shapes in a stax init_fn's output shape: one tuple of ints, or (for FanOut) a list of them."""
    if isinstance(value, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in value):
        return [tuple(int(d) for d in value)]
    if isinstance(value, (tuple, list)):
        return [shape for item in value for shape in _shapes(item)]
    return []


def _layer_input(parsed: _Parsed, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of 2 inputs as the first layer sees them: for an AtomSum network, 2 atoms
    without the mask channel (`raygram.kernels.atoms.AtomSum`), else 2 network inputs."""
    if parsed.atom_sum:
        return (2,) + tuple(input_shape[1:-1]) + (input_shape[-1] - 1,)
    return (2,) + tuple(input_shape)


def _check_layer_shapes(spec, input_shape: tuple[int, ...], where: str) -> None:
    """Trace each layer's init_fn in turn on 2 inputs (shapes only, `jax.eval_shape`): a layer that
    raises, or gives an empty output, is named by its position and name.

    Catches bad layer arguments neural-tangents accepts when the layer is made and fails on
    later (out_chan 0, strides 0: a ZeroDivisionError) or never (a filter or pooling window
    larger than its input with VALID padding gives an empty output, and a kernel of NaN).

    Args:
      spec: a layer list.
      input_shape: the shape of ONE input (for an AtomSum network: a padded molecule).
      where: the config key named in errors.

    Raises:
      ConfigError naming `where` and the layer's position and name.
    """
    import jax

    parsed = _parse(spec)
    shape = _layer_input(parsed, input_shape)
    reached = []  # (position, name, input shape, output shape) of each layer traced

    def trace(key):
        current = shape
        for position, name, layer in parsed.layers:
            reached.append((position, name, current, None))
            current = layer[0](key, current)[0]
            reached[-1] = (position, name, reached[-1][2], current)
        return 0

    try:
        with warnings.catch_warnings():  # numpy's shape arithmetic warns, and goes on, on strides of 0
            warnings.filterwarnings("error", message=".*(divide by zero|invalid value)", category=RuntimeWarning)
            jax.eval_shape(trace, jax.random.PRNGKey(0))
    except Exception as e:  # noqa: BLE001 - whatever a layer raises on these shapes is a config error here
        position, name, given, _ = reached[-1] if reached else (0, "?", shape, None)
        raise ConfigError(f"{where}: does not accept inputs of shape {tuple(input_shape)}: layer {position} "
                          f"({name}) fails on its inputs of shape {_one(given)}: {type(e).__name__}: "
                          f"{' '.join(str(e).split()) or 'no message'}") from None
    for position, name, given, found in reached:
        if any(d < 1 and d != -1 for out in _shapes(found) for d in out[1:]):  # -1: a size stax leaves open
            raise ConfigError(f"{where}: layer {position} ({name}) gives empty outputs of shape {_one(found)} "
                              f"from inputs of shape {_one(given)} (a width of 0, or a filter or window larger "
                              "than its input with VALID padding?)")


def _failing_layer(spec, input_shape: tuple[int, ...], kinds: Sequence[str], dtype: str,
                   error: Exception) -> tuple[int, str] | None:
    """(position, name) of the layer where the network's kernel fails.

    The kernels of ever longer prefixes of the layer list (`stax.serial`, shapes only) are
    traced until one raises `error` again (same class, same message; a prefix may fail
    for its own reasons, e.g. a head that needs more layers before it); None if none does.
    Only called once the whole network's kernel has failed, to name the layer in the error.

    Args:
      spec: a layer list.
      input_shape: the shape of ONE input.
      kinds: the kernels asked for.
      dtype: "float64" or "float32".
      error: what tracing the whole network's kernel raised.
    """
    import jax

    from raygram._neural_tangents import stax

    parsed = _parse(spec)
    shape = _layer_input(parsed, input_shape)
    probe = jax.ShapeDtypeStruct(shape, np.dtype(dtype))
    for end, (position, name, _) in enumerate(parsed.layers, start=1):
        kernel_fn = stax.serial(*(layer for _, _, layer in parsed.layers[:end]))[2]
        try:
            jax.eval_shape(lambda x: kernel_fn(x, None, tuple(kinds)), probe)  # noqa: B023 - used at once
        except Exception as e:  # noqa: BLE001 - the first prefix failing as the network did names its last layer
            if type(e) is type(error) and str(e) == str(error):
                return position, name
    return None


def _one(shape) -> str:
    """A traced shape without its batch axis of 2, for messages."""
    shapes = _shapes(shape)
    text = [str(s[1:]) for s in shapes]
    return text[0] if len(text) == 1 else "[" + ", ".join(text) + "]"


def check_architecture(spec, input_shape: tuple[int, ...], kinds: Sequence[str] = ("nngp", "ntk"),
                       dtype: str = "float64", where: str = "architecture") -> None:
    """Check, by shape inference only (no kernel is computed), that a network accepts such inputs.

    Catches unknown layers, bad arguments and layer orders that do not compose (e.g. a
    GroupConv before its LiftingConv, a Dense on unflattened images) before anything is
    written, and that the network ends in one output per input. For a layer list, each
    layer's init_fn is traced in turn first (`jax.eval_shape`: shapes only, no FLOPs), so
    that a layer that fails on its inputs (strides 0: a ZeroDivisionError a worker would
    hit) or gives an empty output (out_chan 0, a filter larger than the image with VALID
    padding: a kernel of NaN) is named by position and name, e.g. "layer 0 (Conv)"; so is the
    layer where the kernel's own trace fails.

    Args:
      spec: the architecture in any form `network` takes (a layer list, ``{"python":
        "module:attribute"}``, a stax triple or a kernel_fn).
      input_shape: the shape of ONE input, e.g. (H, W, C) for images.
      kinds: the kernels that will be computed.
      dtype: "float64" or "float32".
      where: the config key named in errors (e.g. "kernels.cnn.architecture").

    Raises:
      ConfigError naming `where`.
    """
    import jax

    probe = jax.ShapeDtypeStruct((2,) + tuple(input_shape), np.dtype(dtype))
    try:
        kernel_fn = network(spec)[2]
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    layer_list = python_reference(spec) is None and callable_network(spec) is None
    if layer_list:
        _check_layer_shapes(spec, input_shape, where)
    try:
        shapes = jax.eval_shape(lambda x: kernel_fn(x, None, tuple(kinds)), probe)
    except Exception as e:  # noqa: BLE001 - any failure of shape inference is a config error here
        culprit = _failing_layer(spec, input_shape, kinds, dtype, e) if layer_list else None
        at = f"layer {culprit[0]} ({culprit[1]}): " if culprit else ""
        raise ConfigError(f"{where}: does not accept inputs of shape {tuple(input_shape)}: {at}"
                          f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    check_outputs(shapes, kinds, where)


def check_outputs(outputs, kinds: Sequence[str], where: str = "architecture") -> None:
    """Check that a kernel traced on 2 inputs gave one (2, 2) array per kind: one output per input.

    Args:
      outputs: what `kernel_fn(x1 (2, ...), x2, kinds)` gave, traced (anything with a
        `.shape`, e.g. `jax.ShapeDtypeStruct`), flattened or as the kernel returned it.
      kinds: the kinds asked for, in order.
      where: the name in errors.

    Raises:
      ConfigError naming `where` and the first kind of another shape.
    """
    import jax

    leaves = jax.tree_util.tree_leaves(outputs)
    if len(leaves) != len(kinds):
        raise ConfigError(f"{where}: the kernel must return one array per kind asked for {tuple(kinds)}, "
                          f"got {len(leaves)}")
    for kind, shape in zip(kinds, leaves):
        if tuple(shape.shape) != (2, 2):
            raise ConfigError(f"{where}: the network must end in one output per input (e.g. a final "
                              f"Dense after pooling); its {kind} kernel has shape {tuple(shape.shape)} for 2 inputs")
