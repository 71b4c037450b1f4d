"""The kernels of spherical CNNs as functions of one relative rotation: `so3_serial`.

Why it is exact. The law of a global filter with i.i.d. coefficients is invariant under
rotating the filter (D_l(h) is orthogonal), and out_ψ(R h) = out_{ψ(h⁻¹ ·)}(R), so after a
lifting or a group convolution the covariance of any two inputs is K(R, R') = k(R R'⁻¹).
A pointwise layer maps k to F(k(·); k₁(e), k₂(e)), still a function of R R'⁻¹ (the
variances k(e) are constant on the group), and biases add constants. So the direct
recursion of `raygram.kernels.so3` (covariances over all pairs of grid points, O(L⁶) per
pair of inputs) only ever evaluates k at the relative rotations s = Q Q'⁻¹ of grid pairs:

    lifting  k(M) = Σ_l ⟨C_l, D_l(M)⟩                   (C_l as in the direct lifting)
    conv     k'(M) = Σ_{l<B} (2l+1) ⟨A_l, D_l(M)⟩,  A_l = Σ_s μ(s) g(s) D_l(s)
    pool     Σ_s μ(s) g(s)

with g the function after the pointwise layers and μ the image of the product quadrature
w_Q w_Q' on s. For the grid R = Rz(α_a) Ry(β_b) Rz(γ_c), s = Rz(α_a) X Rz(-α_a') with
X = Ry(β_b) Rz(δ_j) Ry(-β_b'), δ_j = γ_c - γ_c' on the same uniform grid, so μ(s) =
v_b v_b' / (2L)³ on (2L)⁵ points instead of (2L)⁶ pairs. In the complex basis where
D_l(Rz(α)) = diag(e^{imα}), the α and α' dependence is a two-dimensional Fourier series,

    k(a, X, a') = Σ_mn e^{imα_a} c_mn(X) e^{-inα_a'},   c_mn(X) = Σ_l conj(κ_l,mn) D_l(X)_mn,

so one kernel is (2L)³ small Fourier syntheses and analyses: O(L⁶) time with a small
constant instead of O(L⁹), and O(L³) memory per pair of inputs (coefficients κ_l between
layers; the values at s are produced, passed through the pointwise layers and analysed in
chunks of X). These are the direct recursion's own quadratures, so the values equal the
direct path's to round-off, with and without nonlinearities (tested), and hence the
finite network's mean kernel. It needs global filters whose coefficient law is rotation
invariant (i.i.d., flat spectrum) and i.i.d. across channels, with pointwise layers in
between: it would fail for localised or grid-defined filters.

`quadrature="relative"` replaces μ by the single grid quadrature over relative rotations
(X = Ry(β_b), (2L)³ points s): a different discretisation of the same Haar integrals of
the non-band-limited g, O(L³) time per pair, off the direct values by its quadrature
error (1e-4 at grid bandwidth L = filter band 2, 1e-6 at L = 2B; tested). Without
nonlinearities both quadratures are exact and agree with the direct path to round-off.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from raygram._neural_tangents import nt, stax
from raygram.errors import ConfigError
from raygram.kernels.so3 import resolve_bands, s2_bandwidth, s2_features, so3_bandwidth
from raygram.kernels.so3_grid import degree_slice, dh_angles, dh_weights, rot_y, wigner_d_real
from raygram.kernels.stax_layers import (POINTWISE_LAYERS, pooled_kernel, recorded_call,
                                         serial_with_fast_path)

# Values of one kernel field held at once while analysing a chunk of X (elements).
CHUNK_ELEMENTS = 2 ** 20


@functools.lru_cache(maxsize=None)
def _to_complex(band):
    """[U_l] (2l+1, 2l+1) unitary with U_l D_l(Rz(α)) U_l^† = diag(e^{imα}), m = -l..l."""
    out = []
    for l in range(band):
        v = np.zeros((2 * l + 1, 2 * l + 1), complex)     # columns: eigenvectors, m = -l..l
        v[l, l] = 1.
        for m in range(1, l + 1):
            v[l + m, l + m] = v[l + m, l - m] = 1 / np.sqrt(2)
            v[l - m, l + m], v[l - m, l - m] = -1j / np.sqrt(2), 1j / np.sqrt(2)
        out.append(v.conj().T)
    return out


def _frame(blocks, band):
    """Real per-degree matrices [(*b, 2l+1, 2l+1)] -> complex frame (*b, band, F, F), F = 2·band - 1."""
    u, f = _to_complex(band), 2 * band - 1
    out = []
    for l, x in enumerate(blocks):
        x = jnp.einsum("mi,...ij,nj->...mn", u[l], x, u[l].conj())
        pad = [(0, 0)] * (x.ndim - 2) + [(band - 1 - l, band - 1 - l)] * 2
        out.append(jnp.pad(x, pad))
    out += [jnp.zeros(out[0].shape[:-2] + (f, f), out[0].dtype)] * (band - len(blocks))
    return jnp.stack(out, axis=-3)


def _resize(kc, band):
    """A coefficient frame (*b, B, F, F) cut or zero-padded to `band` degrees."""
    b_old = kc.shape[-3]
    if band <= b_old:
        cut = slice(b_old - band, b_old + band - 1)
        return kc[..., :band, cut, cut]
    pad = [(0, 0)] * (kc.ndim - 3) + [(0, band - b_old)] + [(band - b_old, band - b_old)] * 2
    return jnp.pad(kc, pad)


def _add_constant(kc, c):
    """k + c: the constant lives at l = 0, m = n = 0."""
    centre = kc.shape[-3] - 1
    return kc.at[..., 0, centre, centre].add(c)


def _variance(kc):
    """k(e) = Σ_l tr κ_l (the trace is basis independent), (*b,)."""
    return jnp.real(jnp.einsum("...lmm->...", kc))


QUADRATURES = ("pairs", "relative")


@functools.lru_cache(maxsize=None)
def _phases(n, band):
    """e^{imα_a}, (n, 2·band - 1): α_a = 2πa/n, m = -(band-1)..band-1."""
    return np.exp(2j * np.pi * np.outer(np.arange(n), np.arange(1 - band, band)) / n)


@functools.lru_cache(maxsize=None)
def _quadrature(L, band, quadrature):
    """The rotations X (s = Rz(α_a) X Rz(-α_a')) and their weights μ(X) on the grid of bandwidth L.

    "pairs": X = Ry(β_b) Rz(δ_j) Ry(-β_b'), (2L)³ of them, μ = v_b v_b' / (2L)³: the direct
    recursion's double quadrature over pairs of grid points, exactly. "relative": X = Ry(β_b),
    2L of them, μ = v_b / (2L)²: the single grid quadrature over relative rotations (with
    γ = -α_a'), O(L³) per pair but not the finite network's quadrature (module docstring).
    Returns (count, d_of(index) -> D_l(X) frames (c, band, F, F), μ (count,)).
    """
    beta, _ = dh_angles(L)
    v, n = dh_weights(L), 2 * L
    with jax.ensure_compile_time_eval():   # a constant, also when first built under jit
        dy = np.asarray(_frame(wigner_d_real(band, rot_y(beta)), band))
    if quadrature == "relative":
        return n, lambda index: jnp.asarray(dy)[index], v / n ** 2

    def d_of(index):
        b, j, b2 = index // (n * n), (index // n) % n, index % n
        y, phase = jnp.asarray(dy), jnp.asarray(_phases(n, band))   # δ_j on the α grid
        return jnp.einsum("clmk,ck,clnk->clmn", y[b], phase[j], y[b2].conj())

    return n ** 3, d_of, np.einsum("b,j,c->bjc", v, np.ones(n), v).reshape(-1) / n ** 3


def _by_mn(kc):
    """Frames (*b, B, F, F) -> (F², P, B), P = prod(b): one (pairs × degree) matrix per (m, n)."""
    band, f = kc.shape[-3], kc.shape[-1]
    return jnp.transpose(kc.reshape((-1, band, f * f)), (2, 0, 1))


def _from_mn(x, batch, band):
    """(F², P, B) -> frames (*batch, B, F, F)."""
    f = 2 * band - 1
    return jnp.transpose(x, (1, 2, 0)).reshape(batch + (band, f, f))


def _synthesise(k_mn, d_mn, e):
    """k at the chunk's points s = (X, a, a'): Σ_mn e^{imα_a} c_mn(X) e^{-inα_a'} with
    c_mn(X) = Σ_l conj(κ_l,mn) D_l(X)_mn. k_mn (F², P, B), d_mn (F², B, c) -> (P, c·n²)."""
    n, f = e.shape
    c = jnp.matmul(k_mn.conj(), d_mn).reshape((f, f, k_mn.shape[1], -1))
    k = jnp.real(jnp.einsum("am,mnpx,bn->pxab", e, c, e.conj()))
    return k.reshape(k.shape[0], -1)


def _analyse(g, d_mn, mu, e):
    """Σ over the chunk of μ(s) g(s) D_l(s)_mn: values (P, c·n²) -> (F², P, B)."""
    n, f = e.shape
    g = g.reshape(g.shape[0], -1, n, n).astype(e.dtype)
    big_g = jnp.einsum("am,pxab,bn->mnpx", e, g, e.conj()).reshape(f * f, g.shape[0], -1)
    return jnp.matmul(big_g * mu, jnp.swapaxes(d_mn, 1, 2))


def _relative_kernel(nngp, ntk, var1, var2, shape1, shape2):
    """A neural-tangents Kernel holding k at P relative rotations as nngp (N1, N2, P, 1, 1, 1, 1, 1)."""
    pairs = (1,) * 6

    def rel(x):
        return None if x is None else x.reshape(x.shape[:2] + (x.shape[2], 1) + (1,) * 4)

    return nt.Kernel(nngp=rel(nngp), ntk=rel(ntk), cov1=var1.reshape(var1.shape + pairs),
                     cov2=None if var2 is None else var2.reshape(var2.shape + pairs),
                     x1_is_x2=var2 is None, is_gaussian=True, is_reversed=False, is_input=False,
                     diagonal_batch=True, diagonal_spatial=False, shape1=shape1, shape2=shape2,
                     batch_axis=0, channel_axis=4, mask1=None, mask2=None)


def _pointwise(values, kernel_fn, shape1, shape2):
    """A neural-tangents pointwise layer on the values at the points and on the variances k(e)."""
    selfs, var = values["self"], values["var"]
    k = kernel_fn(_relative_kernel(values["nngp"], values["ntk"], var[0], var[1], shape1, shape2))
    nngp = k.nngp.reshape(k.nngp.shape[:3])
    ntk = None if k.ntk is None else k.ntk.reshape(k.ntk.shape[:3])

    def one(s, v):
        kk = kernel_fn(_relative_kernel(s[None, None], None, v[None], None,
                                        (1,) + shape1[1:], (1,) + shape1[1:]))
        return kk.nngp.reshape(s.shape)

    return dict(values, nngp=nngp, ntk=ntk,
                self=[None if s is None else jax.vmap(one)(s, v) for s, v in zip(selfs, var)],
                var=[None if v is None else jax.vmap(one)(v[:, None], v)[:, 0] for v in var])


def _segment(state, pointwise, L, band_out, quadrature):
    """Pointwise layers between two linear SO(3) layers, then the next one's quadrature.

    `state`: coefficient frames on the grid of bandwidth L. Returns the frames of
    A_l (l < band_out) or, for band_out None (pooling), the pooled scalars.
    """
    band = max(state["nngp"].shape[-3], band_out or 1)
    size, d_of, mu_all = _quadrature(L, band, quadrature)
    fields = {"nngp": state["nngp"], "ntk": state["ntk"], "self0": state["self"][0],
              "self1": state["self"][1]}
    fields = {k: None if x is None else _resize(x, band) for k, x in fields.items()}
    batch = {k: None if x is None else x.shape[:-3] for k, x in fields.items()}
    variances = [None if x is None else _variance(x) for x in (fields["self0"], fields["self1"])]
    by_mn = {k: None if x is None else _by_mn(x) for k, x in fields.items()}
    n1, n2 = state["nngp"].shape[:2]
    n = 2 * L
    per_x = (n1 * n2 + n1 + n2) * n * n
    chunk = max(c for c in (n ** p for p in range(4))
                if size % c == 0 and (c == 1 or c * per_x <= CHUNK_ELEMENTS))
    dtype = state["nngp"].dtype
    e = jnp.asarray(_phases(n, band), dtype)
    mu_all = jnp.asarray(mu_all, jnp.real(e).dtype)

    def values_of(d_mn):
        out = {}
        for k, x in by_mn.items():
            if x is None:
                out[k] = None
                continue
            out[k] = _synthesise(x, d_mn, e).reshape(batch[k] + (-1,))
        values = dict(nngp=out["nngp"], ntk=out["ntk"], self=[out["self0"], out["self1"]],
                      var=variances)
        for layer, shape1, shape2 in pointwise:
            values = _pointwise(values, layer, shape1, shape2)
        return values

    def step(acc, index):
        d = d_of(index).astype(dtype)
        d_mn = jnp.transpose(d.reshape(d.shape[:2] + (-1,)), (2, 1, 0))      # (F², B, c)
        values = values_of(d_mn)
        mu = mu_all[index]
        flat = {"nngp": values["nngp"], "ntk": values["ntk"], "self0": values["self"][0],
                "self1": values["self"][1]}
        new = {}
        for k, x in flat.items():
            if x is None:
                new[k] = None
                continue
            g = x.reshape((-1, x.shape[-1]))
            if band_out is None:
                new[k] = acc[k] + (g.reshape(g.shape[0], chunk, -1).sum(-1) @ mu)
            else:
                new[k] = acc[k] + _analyse(g, d_mn, mu.astype(dtype), e)
        return new, None

    def zeros(k):
        if by_mn[k] is None:
            return None
        if band_out is None:
            return jnp.zeros(by_mn[k].shape[1], jnp.real(e).dtype)
        return jnp.zeros_like(by_mn[k])

    acc = {k: zeros(k) for k in by_mn}
    indices = jnp.arange(size).reshape(size // chunk, chunk)
    acc, _ = jax.lax.scan(step, acc, indices)
    if band_out is None:
        return {k: None if x is None else x.reshape(batch[k]) for k, x in acc.items()}
    return {k: None if x is None else _resize(_from_mn(x, batch[k], band), band_out)
            for k, x in acc.items()}


def _affine(state, transform, args, fan_in):
    """W_std² T(·) + b_std² on every coefficient field; the NTK as neural-tangents' Dense/Conv."""
    w_sq = args["W_std"] ** 2
    b_sq = 0. if args["b_std"] is None else args["b_std"] ** 2
    nngp_t = transform(state["nngp"])
    nngp = _add_constant(w_sq * nngp_t, b_sq)
    ntk = state["ntk"]
    ntk_t = None if ntk is None else transform(ntk)
    if not state["with_ntk"]:
        ntk = None
    elif args["parameterization"] == "ntk":
        ntk = nngp if ntk_t is None else w_sq * ntk_t + nngp
    else:
        ntk = fan_in * nngp_t + (0. if ntk_t is None else w_sq * ntk_t)
        ntk = _add_constant(ntk, 0. if args["b_std"] is None else 1.)
    selfs = [None if s is None else _add_constant(w_sq * transform(s), b_sq) for s in state["self"]]
    return dict(state, nngp=nngp, ntk=ntk, self=selfs)


def _fast_plan(layers):
    """Index of the SO3Pool in S2Lifting, (SO3Conv | pointwise)*, SO3Pool, head...; else None."""
    names = [recorded_call(l)[0] for l in layers]
    if not names or names[0] != "S2Lifting" or names.count("SO3Pool") != 1:
        return None
    pool = names.index("SO3Pool")
    for layer, name in zip(layers[1:pool], names[1:pool]):
        if name != "SO3Conv" and (name is not None or layer[2].__name__ not in POINTWISE_LAYERS):
            return None
    return pool


def so3_serial(*layers, quadrature: str = "pairs"):
    """Drop-in for `stax.serial(*layers)` whose `kernel_fn` takes the relative-rotation path.

    For S2Lifting -> (SO3Conv | pointwise neural-tangents layer)* -> SO3Pool -> head, the
    kernel is carried as Wigner coefficients of one function of the relative rotation per
    pair of inputs (plus each input's own, which the pointwise layers need for their
    variances) and evaluated with the direct recursion's quadratures (module docstring):
    the same values in O(L⁶) instead of O(L⁹) time per pair. The head (any neural-tangents
    layers after the pooling) runs on the pooled Kernel. Other stacks, and calls with a
    Kernel or extra keyword arguments, use `stax.serial`'s direct recursion.
    `quadrature="relative"` trades the exact values for O(L³) work per pair (see
    `_quadrature`). Returns `(init_fn, apply_fn, kernel_fn)`; `kernel_fn(x1, x2=None, get=None)`.
    """
    if quadrature not in QUADRATURES:
        raise ConfigError(f"quadrature must be one of {QUADRATURES}, got {quadrature!r}.")
    pool = _fast_plan(layers)
    if pool is None:
        return stax.serial(*layers)

    @functools.cache
    def input_shapes(input_shape):
        """Input shape of every layer up to the pool, from a shape-only trace of the init_fns."""
        shapes = []

        def trace(key):
            shape = input_shape
            for layer in layers[:pool + 1]:
                shapes.append(shape)
                shape = layer[0](key, shape)[0]
            return 0

        jax.eval_shape(trace, jax.random.PRNGKey(0))
        return shapes

    def lifted(x1, x2, shape, args, with_ntk):
        """Coefficient state after the lifting: C_l = mean over channels of f̂_l(x1) f̂_l(x2)ᵀ."""
        name, channels = "S2Lifting", shape[-1]
        l_out, band = resolve_bands(name, s2_bandwidth(shape, name), args["bandwidth"],
                                     args["filter_bandwidth"])
        f1 = s2_features(x1, band)
        f2 = f1 if x2 is None else s2_features(x2, band)

        def coefs(a, b, spec):
            return _frame([jnp.einsum(spec, a[..., degree_slice(l)], b[..., degree_slice(l)]) / channels
                           for l in range(band)], band)

        state = dict(nngp=coefs(f1, f2, "ica,jcb->ijab"), ntk=None, with_ntk=with_ntk,
                     self=[coefs(f1, f1, "ica,icb->iab"),
                           None if x2 is None else coefs(f2, f2, "ica,icb->iab")])
        return _affine(state, lambda k: k, args, channels), l_out

    def pooled(x1, x2, with_ntk):
        """Pooled (nngp, ntk, var1, var2, channels) by the relative recursion."""
        shapes = input_shapes(tuple(x1.shape))
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        _, args = recorded_call(layers[0])
        state, grid = lifted(x1, x2, shapes[0], args, with_ntk)
        between = []
        for layer, shape in zip(layers[1:pool + 1], shapes[1:pool + 1]):
            name, args = recorded_call(layer)
            if name is None:
                between.append((layer[2], shape, (n2,) + shape[1:]))
                continue
            if name == "SO3Pool":
                out = _segment(state, between, grid, None, quadrature)
                return out["nngp"], out["ntk"], out["self0"], out["self1"], shape[-1]
            l_in = so3_bandwidth(shape, name)
            l_out, band = resolve_bands(name, l_in, args["bandwidth"], args["filter_bandwidth"])
            out = _segment(state, between, grid, band, quadrature)
            scale = jnp.asarray(2 * np.arange(band) + 1., out["nngp"].dtype)[:, None, None]
            state = _affine(dict(state, nngp=out["nngp"], ntk=out["ntk"],
                                 self=[out["self0"], out["self1"]]),
                            lambda a: a * scale, args, shape[-1])
            grid, between = l_out, []
        raise AssertionError("unreachable: _fast_plan guarantees an SO3Pool")

    def pooled_fn(x1, x2, names):
        nngp, ntk, var1, var2, channels = pooled(x1, x2, names is None or "ntk" in names)
        return pooled_kernel(nngp, ntk, var1, var2, x1, x2, channels)

    return serial_with_fast_path(layers, pool, pooled_fn)
