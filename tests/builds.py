"""Helpers shared by the tests: architectures, data, references, store snapshots, stopping processes."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess

import numpy as np

from raygram.kernels import GroupConv, GroupPool, LiftingConv, serial
from raygram._neural_tangents import stax

# C4 GCNN with a smooth nonlinearity: tile and monolithic kernels agree to float64 round-off.
EQUIVARIANT = [
    {"LiftingConv": {"out_chan": 4, "filter_shape": [3, 3], "group": "C4", "padding": "SAME"}}, "Erf",
    {"GroupConv": {"out_chan": 4, "filter_shape": [3, 3], "group": "C4", "padding": "SAME"}}, "Erf",
    "GroupPool", {"Dense": {"out_dim": 1}},
]
# Plain neural-tangents CNN with ReLU.
CNN = [{"Conv": {"out_chan": 4, "filter_shape": [3, 3], "padding": "SAME"}}, "Relu", "Flatten",
       {"Dense": {"out_dim": 1}}]


def reference_kernel_fn(architecture):
    """The monolithic kernel_fn, built from the layer constructors directly (not from the spec)."""
    if architecture is EQUIVARIANT:
        return serial(LiftingConv(4, (3, 3), group="C4", padding="SAME"), stax.Erf(),
                      GroupConv(4, (3, 3), group="C4", padding="SAME"), stax.Erf(),
                      GroupPool(), stax.Dense(1))[2]
    assert architecture is CNN
    return stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Relu(), stax.Flatten(), stax.Dense(1))[2]


def images(n, size=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 1))


def read_blocks(store) -> dict[tuple[str, str], np.ndarray]:
    """Every block of a finished store as numpy arrays, train_train as the full symmetric matrix."""
    return {(kind, block): np.asarray(store.gram(kind, block)[...])
            for kind in store.kinds for block in store.plan.blocks}


def snapshot(path) -> dict[str, str]:
    """{relative file path: sha256} of everything under a local folder ({} if it does not exist)."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def stop_process_group(process: subprocess.Popen, timeout: float = 120) -> None:
    """SIGTERM the process group a test started (``start_new_session=True``), SIGKILL it after `timeout` s.

    Only that group is signalled: other clusters and servers on the machine are left alone.
    """
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
