"""What a build records and ships for its kernel: layer lists as data, Python kernels by name and traced digest.

The digest must be the same in every process (a resumed build runs in a new one) and must
change with the computation; the pickled kernel must load on a Ray worker that cannot
import the user's module; bad kernels are refused in one line before any work.
"""
import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import ray.cloudpickle

from raygram._neural_tangents import stax
from raygram.build.kernel_source import KernelSource, kernel_source, traced_digest
from raygram.build.worker import TileWorker
from raygram.errors import CompileFailed, ConfigError
from raygram.kernels.architecture import network, spec_json

SHAPE = (4, 4, 2)
X = np.random.default_rng(0).normal(size=(3,) + SHAPE)

# A user's module: a module-level kernel_fn (importable, so cloudpickle would pickle it by
# reference), a stax network, and a custom-VJP function whose jaxpr prints object addresses.
USER_MODULE = '''
import jax
import jax.numpy as jnp
import numpy as np
from neural_tangents import stax

_, _, _network = stax.serial(stax.Conv(3, (3, 3), W_std=1.5, padding="SAME"), stax.Relu(), stax.Flatten(),
                             stax.Dense(1))
SCALE = np.array([1.0, 2.0])


@jax.custom_vjp
def _double(x):
    return 2 * x


_double.defvjp(lambda x: (_double(x), None), lambda _, g: (2 * g,))


def kernel_fn(x1, x2, get):
    """A plain Python kernel_fn around a stax network."""
    return _network(x1, x2, get)


def custom_kernel_fn(x1, x2, get):
    """A kernel of the user's own: custom VJP and a constant array."""
    x2 = x1 if x2 is None else x2
    gram = _double(x1 * SCALE).reshape(len(x1), -1) @ x2.reshape(len(x2), -1).T
    return tuple(gram for _ in get)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    """A user module (unique name) importable from tmp_path/user, removed from sys.modules afterwards."""
    name = "rg_ks_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "user"))
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


def run_python(code: str, cwd, **env) -> str:
    """stdout of `python -c code` in a fresh process (not importing the test's modules), in cwd."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_ENABLE_X64")}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         cwd=cwd, env={**environment, **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_layer_list_is_recorded_and_shipped_as_its_canonical_form():
    spec = [{"Conv": {"out_chan": 3, "filter_shape": (3, 3), "padding": "SAME"}}, "Relu", "Flatten",
            {"Dense": {"out_dim": 1}}]
    source = kernel_source(spec)  # no x_train needed: nothing is traced
    assert source.description == json.loads(spec_json(spec))  # the fingerprint of existing stores is unchanged
    assert source.payload == source.description
    np.testing.assert_array_equal(source.kernel_fn()(X, None, "ntk"), network(spec)[2](X, None, "ntk"))


def test_a_python_kernel_needs_a_name_and_inputs():
    kernel_fn = stax.serial(stax.Dense(1))[2]
    for name in (None, "", "  "):
        with pytest.raises(ConfigError) as error:
            kernel_source(kernel_fn, X, name=name)
        assert str(error.value) == ("name= is required for a Python kernel_fn: it names the kernel in the "
                                    "store's fingerprint")
    with pytest.raises(ConfigError, match=r"kernel 'dense': x_train is needed to trace a Python kernel_fn"):
        kernel_source(kernel_fn, name="dense")


def test_a_python_kernel_is_recorded_by_name_and_digest_and_shipped_pickled(user_module):
    source = kernel_source(user_module.kernel_fn, X, name="cnn")
    assert set(source.description) == {"python", "jaxpr_sha256"} and source.description["python"] == "cnn"
    assert isinstance(source.payload, bytes)
    np.testing.assert_array_equal(source.kernel_fn()(X, None, ("ntk",))[0], user_module.kernel_fn(X, None, "ntk"))
    # The stax triple and the bare kernel_fn are one kernel; the config form is named by its reference.
    triple = stax.serial(stax.Conv(3, (3, 3), W_std=1.5, padding="SAME"), stax.Relu(), stax.Flatten(), stax.Dense(1))
    assert kernel_source(triple, X, name="cnn").description == source.description
    reference = f"{user_module.__name__}:kernel_fn"
    by_reference = kernel_source({"python": reference}, X, name="ignored")
    assert by_reference.description == kernel_source(user_module.kernel_fn, X, name=reference).description
    assert by_reference.description["python"] == reference


def test_the_digest_follows_the_computation_not_the_objects(user_module):
    def cnn(w_std):
        return stax.serial(stax.Conv(3, (3, 3), W_std=w_std, padding="SAME"), stax.Relu(), stax.Flatten(),
                           stax.Dense(1))[2]

    assert traced_digest(cnn(1.5), SHAPE) == traced_digest(cnn(1.5), SHAPE)  # rebuilt: new closures, same digest
    assert traced_digest(cnn(1.5), SHAPE) == traced_digest(user_module.kernel_fn, SHAPE)
    assert traced_digest(cnn(1.25), SHAPE) != traced_digest(cnn(1.5), SHAPE)
    assert traced_digest(cnn(1.5), SHAPE) != traced_digest(cnn(1.5), (5, 5, 2))
    before = traced_digest(user_module.custom_kernel_fn, SHAPE)
    user_module.SCALE = np.array([1.0, 3.0])  # a constant array: its values, not only its shape, count
    assert traced_digest(user_module.custom_kernel_fn, SHAPE) != before


def test_the_digest_is_the_same_in_every_process(user_module, tmp_path):
    """Fresh processes (other hash seeds, object addresses, x64 off) give the digests of this one (x64 on)."""
    # JAX before 0.6 prints the custom VJP's rules with their object addresses (newer JAX blanks
    # them itself): then only the digest's own blanking makes the processes agree.
    here = [kernel_source(getattr(user_module, f), X, name="k").description for f in ("kernel_fn", "custom_kernel_fn")]
    code = f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(tmp_path / "user")!r})
        from raygram.build.kernel_source import kernel_source
        import {user_module.__name__} as user
        x = np.zeros((3,) + {SHAPE!r})
        print(json.dumps([kernel_source(getattr(user, f), x, name="k").description
                          for f in ("kernel_fn", "custom_kernel_fn")]))
    """
    for seed in ("1", "2"):
        assert json.loads(run_python(code, tmp_path, PYTHONHASHSEED=seed)) == here


def test_the_pickled_kernel_loads_where_its_module_cannot_be_imported(user_module, tmp_path):
    """Like a Ray worker without the user's module on its path: the user's code travels by value."""
    registry = ray.cloudpickle.list_registry_pickle_by_value()
    source = kernel_source(user_module.kernel_fn, X, name="cnn")
    assert ray.cloudpickle.list_registry_pickle_by_value() == registry  # cloudpickle's global registry restored
    (tmp_path / "by_value.pkl").write_bytes(source.payload)
    (tmp_path / "by_reference.pkl").write_bytes(ray.cloudpickle.dumps(user_module.kernel_fn))
    np.save(tmp_path / "x.npy", X)
    code = """
        import pickle
        import jax
        import numpy as np
        import raygram  # as in a worker: neural-tangents without TensorFlow
        jax.config.update("jax_enable_x64", True)
        x = np.load("x.npy")
        np.save("ntk.npy", pickle.load(open("by_value.pkl", "rb"))(x, None, "ntk"))
        try:
            pickle.load(open("by_reference.pkl", "rb"))
        except ModuleNotFoundError as e:
            print(e.name)
    """
    assert run_python(code, tmp_path).strip() == user_module.__name__  # what plain pickling would have done
    np.testing.assert_array_equal(np.load(tmp_path / "ntk.npy"), user_module.kernel_fn(X, None, "ntk"))


def test_a_kernel_that_cannot_be_pickled_is_refused_in_one_line():
    lock = threading.Lock()
    kernel_fn = stax.serial(stax.Dense(1))[2]

    def locked(x1, x2, get):
        with lock:
            return kernel_fn(x1, x2, get)

    with pytest.raises(ConfigError) as error:
        kernel_source(locked, X.reshape(3, -1), name="locked")
    assert str(error.value) == ("kernel 'locked' cannot be pickled for the Ray workers: TypeError: cannot pickle "
                                "'_thread.lock' object")


@pytest.mark.parametrize("kernel_fn, message", [
    (lambda x1, x2, get: 1 / 0, r"^kernel 'bad' cannot be traced on inputs of shape \(4, 4, 2\) \(x2=x\): "
                                r"ZeroDivisionError: division by zero$"),
    (lambda x1, x2, get: (x1 @ x2.T,) * 2, r"^kernel 'bad' cannot be traced on inputs of shape \(4, 4, 2\) "
                                           r"\(x2=x\): TypeError: dot_general requires contracting dimensions"),
    (lambda x1, x2, get: tuple(x1.reshape(2, -1) @ x2.reshape(2, -1).T for _ in get),
     r"^kernel 'bad' cannot be traced .* \(x2=None\): AttributeError: 'NoneType' object has no attribute"),
    (stax.serial(stax.Conv(3, (3, 3)), stax.Relu())[2], r"^kernel 'bad': the network must end in one output per "
                                                        r"input .* nngp kernel has shape \(2, 2, 2, 2, 2, 2\)"),
], ids=["raises", "bad-shapes", "no-x2-none", "many-outputs"])
def test_a_kernel_that_cannot_be_traced_is_refused_in_one_line(kernel_fn, message):
    with pytest.raises(ConfigError, match=message) as error:
        kernel_source(kernel_fn, X, name="bad")
    assert "\n" not in str(error.value)


def test_a_worker_that_cannot_load_the_kernel_fails_its_first_call_in_one_error(user_module, tmp_path):
    """A worker without the kernel's module (pickled by reference here, as an installed package's
    function is) does not die in its constructor: its first call raises CompileFailed saying why."""
    payload = ray.cloudpickle.dumps(user_module.kernel_fn)
    sys.modules.pop(user_module.__name__)
    sys.path.remove(str(tmp_path / "user"))
    worker = TileWorker(KernelSource({"python": "cnn", "jaxpr_sha256": "0"}, payload), ("ntk",), "float64", X, None)
    with pytest.raises(CompileFailed, match=r"the kernel cannot be loaded on host .*: ModuleNotFoundError: "
                                            rf"No module named '{user_module.__name__}'"):
        worker.tile_memory([2])


def test_a_kernel_with_a_cached_inner_function_is_shipped_with_a_new_cache():
    """As neural-tangents' GlobalSelfAttention caches its positional embeddings: plain cloudpickle
    pickles an lru_cache wrapper by reference, which fails for one defined inside a function."""
    def cached_network(factor):
        @functools.lru_cache(maxsize=1)
        def scale():
            return factor

        def kernel_fn(x1, x2, get):
            x2 = x1 if x2 is None else x2
            gram = scale() * x1.reshape(len(x1), -1) @ x2.reshape(len(x2), -1).T
            return tuple(gram for _ in get)

        return kernel_fn

    with pytest.raises((AttributeError, pickle.PicklingError), match="local object"):
        ray.cloudpickle.dumps(cached_network(2.0))
    loaded = kernel_source(cached_network(2.0), X, name="cached").kernel_fn()
    np.testing.assert_array_equal(loaded(X, None, ("ntk",))[0], cached_network(2.0)(X, None, ("ntk",))[0])
