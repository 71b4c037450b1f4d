"""neural-tangents' own networks through raygram's build: any kernel_fn, tiled on Ray, equals nt's.

A Myrtle-style CNN, a WideResNet block (FanOut / parallel / FanInSum) and global
self-attention on images, built by `build_gram` from their stax kernel_fn with tiles of 4
for N = 10 training and M = 5 test images, against the monolithic kernel_fn and
`nt.batch(kernel_fn, batch_size=5)` (nt.batch needs N and M divisible by its batch).

Tolerances. Off-diagonal entries differ from the references only by the order of float64
reductions in differently shaped XLA programs (tiles of 4 against one program for all 10
or blocks of 5): relative 1e-12 of the block's largest entry, ~1000x the float64
round-off of these few-layer sums. Self-pairs (the diagonal of train×train and the test
self-kernels) go through ReLU's arc-cosine at a cosine that is 1 up to round-off, where
an ulp (1e-16) becomes ~sqrt(1e-16) = 1e-8 in the angle; they are held to 1e-7
(tests/build/test_scheduler.py makes the same split for its ReLU CNN).
"""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import yaml

from builds import read_blocks, snapshot
from raygram._neural_tangents import nt, stax
from raygram.build import build_gram
from raygram.config import TilingOptions
from raygram.errors import ConfigError, FingerprintMismatch
from raygram.store.gram_store import GramStore

N, M, TILE = 10, 5, 4
KINDS = ("nngp", "ntk")
OFF_DIAGONAL, SELF_PAIRS = 1e-12, 1e-7  # relative to the block's largest entry; see the module docstring


def myrtle(w_std=2 ** 0.5):
    """Myrtle-style CNN: Conv/ReLU blocks, two average pools, a linear readout."""
    def conv():
        return stax.Conv(8, (3, 3), W_std=w_std, padding="SAME")

    return stax.serial(conv(), stax.Relu(), conv(), stax.Relu(), stax.AvgPool((2, 2), strides=(2, 2)),
                       conv(), stax.Relu(), stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten(), stax.Dense(1))


def wide_resnet():
    """One WideResNet block as in neural-tangents' examples: a ReLU-Conv main path and a Conv shortcut."""
    main = stax.serial(stax.Relu(), stax.Conv(8, (3, 3), padding="SAME"), stax.Relu(),
                       stax.Conv(8, (3, 3), padding="SAME"))
    block = stax.serial(stax.FanOut(2), stax.parallel(main, stax.Conv(8, (1, 1))), stax.FanInSum())
    return stax.serial(stax.Conv(8, (3, 3), padding="SAME"), block, stax.AvgPool((2, 2), strides=(2, 2)),
                       stax.Flatten(), stax.Dense(1))


def attention():
    """Global self-attention over the pixels of a feature map. neural-tangents has its kernel in
    closed form for `linear_scaling=True` (1/n query-key scaling); with the standard
    1/sqrt(n) scaling and softmax it raises NotImplementedError."""
    return stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.Relu(),
                       stax.GlobalSelfAttention(n_chan_out=8, n_chan_key=8, n_chan_val=8, n_heads=2,
                                                linear_scaling=True, attention_mechanism="SOFTMAX"),
                       stax.Flatten(), stax.Dense(1))


def images(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3))


def assert_close(got, want, key):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=SELF_PAIRS * scale, err_msg=str(key))
    if got.ndim == 2:
        off = ~np.eye(*got.shape, dtype=bool) if key[1] == "train_train" else np.ones(got.shape, bool)
        np.testing.assert_allclose(got[off], want[off], rtol=0, atol=OFF_DIAGONAL * scale, err_msg=str(key))


@pytest.mark.filterwarnings("ignore:`FanIn` layers assume independent inputs:UserWarning",
                            "ignore:Linear scaling attention used:UserWarning")
@pytest.mark.parametrize("network, workers", [(myrtle, 2), (wide_resnet, 1), (attention, 1)],
                         ids=["myrtle", "wide_resnet", "attention"])
def test_neural_tangents_networks_build_to_their_monolithic_and_batched_kernels(ray_address, tmp_path, network,
                                                                               workers):
    kernel_fn = network()[2]
    x, x_test = images(N, 0), images(M, 1)
    report = build_gram(tmp_path / "gram", kernel_fn, x, x_test, name=network.__name__, progress=False,
                        tiling=TilingOptions(tile_size=TILE, workers=workers))
    got = read_blocks(GramStore(tmp_path / "gram"))
    assert report.tiles_computed == report.tiles_total
    train, test = kernel_fn(x, None, KINDS), kernel_fn(x_test, x, KINDS)
    test_self = kernel_fn(x_test, None, KINDS)
    batched = nt.batch(kernel_fn, batch_size=5)
    batched_train, batched_test = batched(x, None, KINDS), batched(x_test, x, KINDS)
    for kind in KINDS:
        references = {"train_train": [getattr(train, kind), getattr(batched_train, kind)],
                      "test_train": [getattr(test, kind), getattr(batched_test, kind)],
                      "test_diag": [np.diagonal(getattr(test_self, kind))]}
        for block, wants in references.items():
            assert got[(kind, block)].shape == np.shape(wants[0])
            for want in wants:
                assert_close(got[(kind, block)], np.asarray(want), (kind, block))


def small_cnn(w_std):
    return stax.serial(stax.Conv(4, (3, 3), W_std=w_std, padding="SAME"), stax.Relu(), stax.Flatten(),
                       stax.Dense(1))


def test_a_changed_network_is_refused_and_the_same_one_resumes(ray_address, tmp_path):
    x = images(5, 2)[:, :6, :6, :1]
    tiling = TilingOptions(tile_size=TILE, workers=1)
    build_gram(tmp_path / "gram", small_cnn(1.5)[2], x, name="cnn", progress=False, tiling=tiling)
    before = snapshot(tmp_path / "gram")
    with pytest.raises(FingerprintMismatch, match=r"architecture: store has .*jaxpr_sha256") as error:
        build_gram(tmp_path / "gram", small_cnn(1.25)[2], x, name="cnn", progress=False, tiling=tiling)
    assert not any(line.startswith("  ") and not line.startswith("  architecture")
                   for line in str(error.value).splitlines())  # only the architecture differs
    assert snapshot(tmp_path / "gram") == before
    # The same network, rebuilt from its layers (new Python objects) and given as its stax triple: resumed.
    again = build_gram(tmp_path / "gram", small_cnn(1.5), x, name="cnn", progress=False, tiling=tiling)
    assert again.tiles_computed == 0 and again.tiles_skipped == again.tiles_total
    assert snapshot(tmp_path / "gram") == before


def test_kernels_that_cannot_be_shipped_or_traced_are_refused_before_any_work(ray_address, tmp_path):
    x = images(5, 2)[:, :6, :6, :1]
    kernel_fn = small_cnn(1.0)[2]
    lock = threading.Lock()

    def locked(x1, x2, get):
        with lock:
            return kernel_fn(x1, x2, get)

    def broken(x1, x2, get):
        raise RuntimeError("this network is not finished")

    cases = [(locked, "locked", r"cannot be pickled for the Ray workers: TypeError: cannot pickle '_thread.lock'"),
             (broken, "broken", r"cannot be traced on inputs of shape \(6, 6, 1\) \(x2=x\): RuntimeError: this "
                                r"network is not finished"),
             (kernel_fn, None, r"^name= is required for a Python kernel_fn")]
    for kernel, name, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            build_gram(tmp_path / "gram", kernel, x, name=name, progress=False, tiling=TilingOptions(tile_size=TILE))
        assert "\n" not in str(error.value)
        assert not (tmp_path / "gram").exists()


USER_NETS = '''
"""A user's network module, importable only where PYTHONPATH names its folder."""
from neural_tangents import stax

_, _, _network = stax.serial(stax.Conv(4, (3, 3), W_std=1.5, padding="SAME"), stax.Relu(),
                             stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten(), stax.Dense(1))


def kernel_fn(x1, x2, get):
    """A module-level function: plain pickling would make the workers import this module."""
    return _network(x1, x2, get)
'''


def test_config_names_a_python_kernel_and_the_workers_need_not_import_it(ray_address, tmp_path):
    """`raygram build` of {python: "rg_user_nets:kernel_fn"}: the module is on the driver's PYTHONPATH only
    (the session's Ray workers were started without it, and the driver runs in another folder)."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "rg_user_nets.py").write_text(USER_NETS)
    (tmp_path / "run").mkdir()
    x, x_test = images(7, 3)[:, :6, :6], images(3, 4)[:, :6, :6]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x_test.npy", x_test)
    config = {"name": "python-kernel", "store": str(tmp_path / "stores"), "kinds": list(KINDS),
              "data": {"source": "npy", "path": str(tmp_path / "x.npy"), "standardize": False,
                       "options": {"x_test": str(tmp_path / "x_test.npy")}},
              "kernels": {"mine": {"architecture": {"python": "rg_user_nets:kernel_fn"}}},
              "tiling": {"tile_size": TILE, "workers": 1}}
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(config))
    path = os.pathsep.join(filter(None, [str(tmp_path / "pkg"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-m", "raygram.cli", "build", str(tmp_path / "build.yaml"), "-q"],
                         capture_output=True, text=True, env=env, cwd=tmp_path / "run", timeout=600)
    assert out.returncode == 0, out.stderr
    store = GramStore(tmp_path / "stores" / "mine")
    described = store.fingerprint["architecture"]
    assert described["python"] == "rg_user_nets:kernel_fn" and len(described["jaxpr_sha256"]) == 64
    got = read_blocks(store)
    reference = stax.serial(stax.Conv(4, (3, 3), W_std=1.5, padding="SAME"), stax.Relu(),
                            stax.AvgPool((2, 2), strides=(2, 2)), stax.Flatten(), stax.Dense(1))[2]
    train, test, test_self = reference(x, None, KINDS), reference(x_test, x, KINDS), reference(x_test, None, KINDS)
    for kind in KINDS:
        for block, want in (("train_train", getattr(train, kind)), ("test_train", getattr(test, kind)),
                            ("test_diag", np.diagonal(getattr(test_self, kind)))):
            assert_close(got[(kind, block)], np.asarray(want), (kind, block))
    # Python and the config name one kernel alike: a Python build with name= the reference shares the store.
    again = build_gram(tmp_path / "stores" / "mine", reference, x, x_test, name="rg_user_nets:kernel_fn",
                       progress=False, tiling=TilingOptions(tile_size=TILE, workers=1))
    assert again.tiles_computed == 0 and json.dumps(store.fingerprint["architecture"]) == json.dumps(described)
