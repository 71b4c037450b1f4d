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
"""
from __future__ import annotations

import json
from typing import Any

PLANAR_LAYERS = ("LiftingConv", "GroupConv", "GroupPool")
SO3_LAYERS = ("S2Lifting", "SO3Conv", "SO3Pool")
RAYGRAM_LAYERS = PLANAR_LAYERS + SO3_LAYERS
AUGMENTATION = "FullAugmentation"
ATOM_SUM = "AtomSum"


def _plain(value):
    """JSON-able form of a keyword value: tuples become lists, mapping keys sorted."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(value[k]) for k in sorted(value)}
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
        raise ValueError("architecture must be a non-empty list of layers, e.g. "
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
            raise ValueError(f"architecture layer {position}: expected a layer name or a one-key "
                             f"mapping {{name: {{arguments}}}}, got {entry!r}")
        if not isinstance(kwargs, dict):
            raise ValueError(f"architecture layer {position} ({name}): arguments must be a mapping, "
                             f"got {kwargs!r}")
        try:
            layers.append({str(name): _plain(kwargs)})
        except TypeError as e:
            raise ValueError(f"architecture layer {position} ({name}): {e}") from None
    return layers


def spec_json(spec) -> str:
    """Canonical JSON text of a spec (what a store fingerprint records)."""
    return json.dumps(canonical(spec), sort_keys=True, separators=(",", ":"))


def _layer_constructor(name: str):
    from . import kernels
    from ._neural_tangents import stax

    if name in RAYGRAM_LAYERS:
        return getattr(kernels, name)
    constructor = getattr(stax, name, None)
    if constructor is None or name.startswith("_") or not callable(constructor) or name == "serial":
        raise ValueError(f"unknown layer {name!r}: use one of {', '.join(RAYGRAM_LAYERS)} or a "
                         "neural_tangents.stax layer (Conv, Dense, Relu, Erf, Flatten, GlobalAvgPool, ...), "
                         f"or a last {AUGMENTATION} entry")
    return constructor


def network(spec):
    """`(init_fn, apply_fn, kernel_fn)` of the network a spec describes."""
    from .kernels import augmented_kernel_fn, serial, so3_serial
    from .kernels.atoms import AtomSum

    layers, augmentation, atom_sum, quadrature = [], None, False, "pairs"
    spec = canonical(spec)
    for position, entry in enumerate(spec):
        (name, kwargs), = entry.items()
        if name == ATOM_SUM:
            if position != 0 or len(spec) == 1 or kwargs:
                raise ValueError(f"architecture layer {position} ({name}): takes no arguments and must be "
                                 "the first entry, followed by the per-atom network")
            atom_sum = True
            continue
        if name == AUGMENTATION:
            if position != len(spec) - 1 or position == 0:
                raise ValueError(f"architecture layer {position} ({name}): full augmentation applies to "
                                 "the whole network; it must be the last entry, after at least one layer")
            if set(kwargs) != {"group"}:
                raise ValueError(f"architecture layer {position} ({name}): takes exactly one argument, "
                                 f"group (e.g. C4), got {sorted(kwargs)}")
            if atom_sum:
                raise ValueError(f"architecture layer {position} ({name}): planar augmentation does not "
                                 f"apply to a per-atom ({ATOM_SUM}) network")
            augmentation = kwargs["group"]
            continue
        if name == "SO3Pool" and "quadrature" in kwargs:
            kwargs = dict(kwargs)
            quadrature = kwargs.pop("quadrature")
        try:
            layers.append(_layer_constructor(name)(**_frozen(kwargs)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"architecture layer {position} ({name}): {e}") from None
    if any(next(iter(e)) in SO3_LAYERS for e in spec):
        try:
            init_fn, apply_fn, kernel_fn = so3_serial(*layers, quadrature=quadrature)
        except ValueError as e:
            raise ValueError(f"architecture SO3Pool: {e}") from None
    else:
        init_fn, apply_fn, kernel_fn = serial(*layers)
    if atom_sum:
        return AtomSum(init_fn, apply_fn, kernel_fn)
    if augmentation is not None:
        try:
            kernel_fn = augmented_kernel_fn(kernel_fn, augmentation)
        except (KeyError, ValueError) as e:
            raise ValueError(f"architecture layer {len(spec) - 1} ({AUGMENTATION}): {e}") from None
    return init_fn, apply_fn, kernel_fn
