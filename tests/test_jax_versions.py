"""raygram on both tested JAX lines: the same kernel values on JAX 0.10 as on 0.5.3.

neural-tangents 0.6.5 imports names JAX 0.6 removed; `raygram._neural_tangents`
supplies them before its first import (see that module). These tests pin what that
must not change: a fixed set of kernels, computed here on whichever JAX runs the tests
(CI runs them on both), against values computed with JAX 0.5.3 and written below, and
what the shim touches on either line.

To recompute the reference values (on JAX 0.5.3 only):

    .venv/bin/python tests/test_jax_versions.py
"""
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from raygram._neural_tangents import nt, stax
from raygram.kernels import GroupConv, GroupPool, LiftingConv, S2Lifting, SO3Conv, SO3Pool, serial, so3_serial

JAX_VERSION = tuple(int(p) for p in jax.__version__.split(".")[:2])
# Tolerance against the JAX 0.5.3 values, relative to the largest entry of the kernel.
# Both lines run the same float64 arithmetic, but XLA versions may order sums
# differently (fusion, reduction trees), so values agree to round-off, not bit for bit.
# The deepest sums are the SO(3) kernel's quadratures, about (2L)^5 ≈ 8e3 terms per pair
# at L = 3: reordering them moves a sum by at most ~n·eps ≈ 2e-12 of the sum of the
# terms' magnitudes, which is of the order of the largest entry (off-diagonal entries
# are small differences of such sums, hence the comparison against the largest entry).
# Any real change of a kernel (a layer, a normalisation, a grid) moves values by far more.
RTOL = 1e-11


def planar_inputs():
    """Three 6x6x1 images, fixed without a random generator (same on every numpy)."""
    return np.sin(0.37 * np.arange(3 * 6 * 6) + 0.5).reshape(3, 6, 6, 1)


def sphere_inputs(L):
    """Three signals with 2 channels on the (2L)x(2L) S² grid of bandwidth L."""
    return np.cos(0.23 * np.arange(3 * 2 * L * 2 * L * 2) - 0.3).reshape(3, 2 * L, 2 * L, 2)


def gcnn(group):
    return [LiftingConv(1, (3, 3), group=group, padding="SAME"), stax.Relu(),
            GroupConv(1, (3, 3), group=group), stax.Relu(), GroupPool(), stax.Dense(1)]


def so3_layers(L):
    return [S2Lifting(1, bandwidth=L), stax.Erf(), SO3Conv(1), stax.Erf(), SO3Pool(), stax.Dense(1)]


# name -> (kernel_fn, inputs): neural-tangents' own CNN-GAP, raygram's C4 fast path, the D4
# general recursion (relative blocks through stax.serial) and an SO(3) pairs kernel.
KERNELS = {
    "CNN-GAP": lambda: (stax.serial(stax.Conv(1, (3, 3), padding="SAME"), stax.Relu(),
                                    stax.Conv(1, (3, 3), padding="SAME"), stax.Relu(),
                                    stax.GlobalAvgPool(), stax.Dense(1))[2], planar_inputs()),
    "C4 GCNN": lambda: (serial(*gcnn("C4"))[2], planar_inputs()),
    "D4 GCNN general": lambda: (stax.serial(*gcnn("D4"))[2], planar_inputs()),
    "SO(3) pairs L=3": lambda: (so3_serial(*so3_layers(3))[2], sphere_inputs(3)),
}

# Computed with JAX 0.5.3, jaxlib 0.5.3, neural-tangents 0.6.5, float64 on CPU
# (`python tests/test_jax_versions.py`): the upper triangle (k00, k01, k02, k11, k12, k22).
REFERENCE = {
    'CNN-GAP': {
        'nngp': [0.04052681590953787, 0.04181561291740044, 0.040492756190048565, 0.04371068869059762, 0.04249174872928646, 0.041855121129820816],
        'ntk': [0.06830198083661443, 0.0696448072807465, 0.06617875767625452, 0.07486114465008158, 0.07100861975537433, 0.0710063440072694],
    },
    'C4 GCNN': {
        'nngp': [0.038261461814235107, 0.039711581515592446, 0.03888074868493632, 0.041354902457721145, 0.04040588106014251, 0.03953191723414307],
        'ntk': [0.057477576918289655, 0.059738539620599614, 0.058428063551248785, 0.06328502607518166, 0.061160813329478335, 0.05968727803873508],
    },
    'D4 GCNN general': {
        'nngp': [0.037998174369372355, 0.03945996880384646, 0.038621714428224804, 0.04109129448525132, 0.04015050012510857, 0.039273368176146656],
        'ntk': [0.056009703216073306, 0.058402498929294236, 0.05702605196190656, 0.06173149396178683, 0.05976781985355699, 0.05824204259057844],
    },
    'SO(3) pairs L=3': {
        'nngp': [1.6724520532592485e-06, -2.120236464883119e-06, 1.118590559500606e-06, 7.26049060005959e-05, -9.357164907707724e-05, 0.0001222106905670268],
        'ntk': [5.017433528727311e-06, -6.360754475982661e-06, 3.3557710318959345e-06, 0.00021781529599214667, -0.0002807151352010115, 0.00036663235286811926],
    },
}


def compute(name):
    """{kind: upper triangle of the 3x3 kernel} of KERNELS[name], in float64."""
    kernel_fn, x = KERNELS[name]()
    out = kernel_fn(x, None, ("nngp", "ntk"))
    rows, cols = np.triu_indices(3)
    return {kind: np.asarray(getattr(out, kind), np.float64)[rows, cols] for kind in ("nngp", "ntk")}


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_equal_the_values_on_jax_0_5_3(name):
    values = compute(name)
    for kind, expected in REFERENCE[name].items():
        scale = np.abs(expected).max()
        np.testing.assert_allclose(values[kind], expected, rtol=0, atol=RTOL * scale,
                                   err_msg=f"{name} {kind} on JAX {jax.__version__}")


def test_moved_names_are_supplied_only_where_jax_lacks_them():
    import jax.core

    util = sys.modules["jax.util"]
    if JAX_VERSION < (0, 6):  # JAX's own module, untouched
        assert util.__file__.startswith(importlib.util.find_spec("jax").submodule_search_locations[0])
    else:
        assert "raygram" in util.__doc__
        import jax.extend.core as extend_core

        assert jax.core.Jaxpr is extend_core.Jaxpr and jax.core.Var is extend_core.Var
    assert util.safe_zip([1, 2], "ab") == [(1, "a"), (2, "b")]
    assert util.safe_map(lambda a, b: a + b, [1, 2], [10, 20]) == [11, 22]
    with pytest.raises(ValueError):
        util.safe_zip([1, 2], [1])


def test_the_shim_runs_before_the_first_import_of_neural_tangents():
    # A fresh process: `import raygram` and then neural-tangents' own `import`, as user code does.
    probe = ("import raygram, sys\nassert 'jax' not in sys.modules, 'import raygram loaded JAX'\n"
             "from neural_tangents import stax\nimport neural_tangents.predict\n"
             "assert 'tensorflow' not in sys.modules\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_empirical_ntk_runs_on_this_jax():
    # The default empirical NTK (Jacobian contraction) is what raygram's convergence checks use.
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1))
    _, params = init_fn(jax.random.PRNGKey(0), (-1, 2))
    x = np.array([[0.3, -1.0], [1.2, 0.4]])
    ntk = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,))(x, None, params)
    # Against the sum of outer products of the parameter gradients, computed by jax.grad.
    grads = [jax.grad(lambda p, xi=xi: apply_fn(p, xi[None])[0, 0])(params) for xi in x]
    flat = np.stack([np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(gi)]) for gi in grads])
    np.testing.assert_allclose(ntk, flat @ flat.T, rtol=1e-12)


@pytest.mark.parametrize("device_count", [0, -1])  # serial batches; pmap over this machine's devices
def test_nt_batch_runs_on_this_jax(device_count):
    # neural-tangents' batching (used by benchmarks/gram_build.py) against the direct kernel.
    # Erf keeps the kernel smooth: ReLU's arccos amplifies the round-off of cos θ ≈ 1 on
    # the diagonal, which batching computes from cross blocks. Each entry is the same
    # per-pair arithmetic (3-feature sums) either way: equal to round-off.
    kernel_fn = stax.serial(stax.Dense(2), stax.Erf(), stax.Dense(1))[2]
    x = np.cos(0.3 * np.arange(8 * 3)).reshape(8, 3)
    batched = nt.batch(kernel_fn, batch_size=4, device_count=device_count, store_on_device=False)
    np.testing.assert_allclose(batched(x, None, "ntk"), kernel_fn(x, None, "ntk"), rtol=1e-13)


POOL_AFTER_RELU = """
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import raygram
from neural_tangents import stax
kernel_fn = stax.serial(stax.Conv(8, (3, 3), padding="SAME"), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1))[2]
x1 = np.sin(0.37 * np.arange(4 * 8 * 8 * 3)).reshape(4, 8, 8, 3)
x2 = np.cos(0.29 * np.arange(2 * 8 * 8 * 3)).reshape(2, 8, 8, 3)  # no self-pairs: ReLU's arc-cosine
for get in ("nngp", "ntk"):  # (the crash was in the NNGP program)
    jitted = jax.jit(kernel_fn, static_argnames="get")(x1, x2, get=get)  # amplifies their round-off
    np.testing.assert_allclose(jitted, kernel_fn(x1, x2, get=get), rtol=1e-12)
print("ok")
"""


def test_jit_compiled_pooling_after_a_nonlinearity_runs_in_float64():
    # jaxlib 0.10's AVX-512 CPU code crashed (SIGSEGV) on exactly this program; importing
    # raygram before JAX starts its backend caps the code at AVX2 there (see
    # raygram._neural_tangents). A fresh process, so that the backend starts after the import.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", POOL_AFTER_RELU], capture_output=True, text=True,
                          timeout=600, env={**env, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


if __name__ == "__main__":
    assert JAX_VERSION < (0, 6), "the reference values are those of JAX 0.5.3"
    jax.config.update("jax_enable_x64", True)
    print("REFERENCE = {")
    for name in KERNELS:
        values = compute(name)
        print(f"    {name!r}: {{")
        for kind, v in values.items():
            print(f"        {kind!r}: [{', '.join(repr(float(e)) for e in v)}],")
        print("    },")
    print("}")
