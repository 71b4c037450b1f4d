"""Equiangular (Driscoll-Healy) grids on S² and SO(3), quadrature, real harmonics and Wigner-D.

Grids of bandwidth L (all angles in radians):

- S²: θ_j = π(2j+1)/(4L), φ_k = 2πk/(2L), j, k < 2L; signals have shape (..., 2L, 2L) with
  axis -2 = θ (polar angle from +z), axis -1 = φ (azimuth). x = (sinθ cosφ, sinθ sinφ, cosθ).
- SO(3): ZYZ Euler angles R = Rz(α) Ry(β) Rz(γ) with α_i = 2πi/(2L), β_j = π(2j+1)/(4L),
  γ_k = 2πk/(2L); feature maps have shape (..., 2L, 2L, 2L) = (α, β, γ).

Measures are normalised to total mass 1 (so quadrature = mean). The quadrature weights
v_j in θ/β solve Σ_j v_j P_n(cos θ_j) = δ_n0 for n < 2L, which integrates exactly every
product of two functions band-limited to degree < L.

Real harmonics y_lm (l < L, m = -l..l, index l² + l + m) are orthonormal for the
normalised measure: mean over S² of y_lm y_l'm' = δ. The real Wigner matrices D_l(R),
(2l+1)×(2l+1) and orthogonal, are defined by y_l(R x) = D_l(R) y_l(x), so that
D_l(R R') = D_l(R) D_l(R') and the mean over SO(3) of D_l,ab D_l',cd is δ_ll' δ_ac δ_bd/(2l+1).
"""
from __future__ import annotations

import functools

import numpy as np
from numpy.polynomial import legendre

from raygram.errors import ConfigError


def check_bandwidth(L, what: str = "bandwidth", optional: bool = False) -> int | None:
    """`L` as an int, after checking that it is a bandwidth: an int >= 1 (not a bool).

    Args:
      L: the bandwidth of a grid (2L samples per angle) or of a filter (degrees < L).
      what: the argument's name, for the message.
      optional: also accept None (returned as None).

    Raises:
      ConfigError: `L` is not an int >= 1 (or None when `optional`).
    """
    if L is None and optional:
        return None
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
        raise ConfigError(f"{what} must be an int >= 1{' or None' if optional else ''}, got {L!r}.")
    return int(L)


def degree_slice(l: int) -> slice:
    """The degree-l block of a real-harmonic axis (index l² + l + m, m = -l..l): (2l+1) entries."""
    return slice(l * l, (l + 1) ** 2)


@functools.lru_cache(maxsize=None)
def dh_angles(L: int) -> tuple[np.ndarray, np.ndarray]:
    """(polar angles θ_j (2L,), azimuths φ_k (2L,)) of the DH grid of bandwidth L."""
    check_bandwidth(L)
    j = np.arange(2 * L)
    return np.pi * (2 * j + 1) / (4 * L), 2 * np.pi * j / (2 * L)


@functools.lru_cache(maxsize=None)
def dh_weights(L: int) -> np.ndarray:
    """Quadrature weights v_j (2L,) in θ (or β), Σ v_j = 1, exact for degree < 2L in cos θ."""
    theta, _ = dh_angles(L)
    vander = legendre.legvander(np.cos(theta), 2 * L - 1).T        # (n, j) = P_n(cos θ_j)
    rhs = np.zeros(2 * L)
    rhs[0] = 1.
    return np.linalg.solve(vander, rhs)


def s2_points(L: int) -> np.ndarray:
    """Unit vectors of the S² grid, (2L, 2L, 3)."""
    theta, phi = dh_angles(L)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    return np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1)


def s2_weights(L: int) -> np.ndarray:
    """Quadrature weights of the S² grid, (2L, 2L), summing to 1."""
    return np.repeat(dh_weights(L)[:, None] / (2 * L), 2 * L, axis=1)


def so3_weights(L: int) -> np.ndarray:
    """Quadrature weights of the SO(3) grid, (2L, 2L, 2L), summing to 1 (normalised Haar)."""
    w = dh_weights(L)[None, :, None] / (2 * L) ** 2
    return np.broadcast_to(w, (2 * L,) * 3).copy()


def rot_z(a):
    a = np.asarray(a, float)
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    rows = [np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)]
    return np.stack(rows, -2)


def rot_y(b):
    b = np.asarray(b, float)
    c, s, o, z = np.cos(b), np.sin(b), np.ones_like(b), np.zeros_like(b)
    rows = [np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)]
    return np.stack(rows, -2)


def so3_rotations(L: int) -> np.ndarray:
    """Rotation matrices of the SO(3) grid, (2L, 2L, 2L, 3, 3): Rz(α_i) Ry(β_j) Rz(γ_k)."""
    beta, alpha = dh_angles(L)
    a, b, g = rot_z(alpha), rot_y(beta), rot_z(alpha)
    return np.einsum("iab,jbc,kcd->ijkad", a, b, g)


def random_rotations(key: int, n: int) -> np.ndarray:
    """n Haar-random rotation matrices (n, 3, 3) from a numpy seed (QR of Gaussians)."""
    q, r = np.linalg.qr(np.random.default_rng(key).normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    return q * np.linalg.det(q)[:, None, None]


def real_sph_harm(lmax: int, x: np.ndarray) -> np.ndarray:
    """Real harmonics y_lm(x) for l < lmax at unit vectors x (..., 3): (..., lmax²), mean(y²) = 1.

    y_l0 = √(4π) Q_l⁰(cos θ), y_l±m = √(8π) Q_lᵐ(cos θ) (cos mφ, sin mφ) for m > 0, with the
    orthonormal associated Legendre functions Q_lᵐ from the standard stable recursions.
    """
    x = np.asarray(x, float)
    z = np.clip(x[..., 2], -1., 1.)
    s = np.sqrt(np.clip(1. - z * z, 0., None))
    phi = np.arctan2(x[..., 1], x[..., 0])
    out = np.empty(x.shape[:-1] + (lmax * lmax,))
    q_mm = np.full(z.shape, np.sqrt(1. / (4 * np.pi)))
    for m in range(lmax):
        if m > 0:
            q_mm = np.sqrt((2 * m + 1) / (2 * m)) * s * q_mm
        q_prev, q = np.zeros_like(z), q_mm
        for l in range(m, lmax):
            if l > m:
                a = np.sqrt((4 * l * l - 1) / (l * l - m * m))
                b = np.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
                q_prev, q = q, a * (z * q - b * q_prev)
            if m == 0:
                out[..., l * l + l] = np.sqrt(4 * np.pi) * q
            else:
                out[..., l * l + l + m] = np.sqrt(8 * np.pi) * q * np.cos(m * phi)
                out[..., l * l + l - m] = np.sqrt(8 * np.pi) * q * np.sin(m * phi)
    return out


@functools.lru_cache(maxsize=None)
def _probe_points(lmax: int) -> np.ndarray:
    v = np.random.default_rng(1234).normal(size=(3 * (2 * lmax + 1), 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def wigner_d_real(lmax: int, rotations: np.ndarray) -> list[np.ndarray]:
    """Real Wigner matrices [D_l(R) for l < lmax], each (..., 2l+1, 2l+1), y_l(R x) = D_l(R) y_l(x).

    Solved by least squares from harmonics at fixed probe points (exact to round-off:
    the probe matrix has full column rank for every l).
    """
    rotations = np.asarray(rotations, float)
    batch = rotations.shape[:-2]
    p = _probe_points(lmax)
    y_p = real_sph_harm(lmax, p)                                            # (n, lmax²)
    y_rp = real_sph_harm(lmax, np.einsum("...ab,nb->...na", rotations, p))  # (..., n, lmax²)
    out = []
    for l in range(lmax):
        s = degree_slice(l)
        pinv = np.linalg.pinv(y_p[:, s])                                    # (2l+1, n)
        dt = np.einsum("an,...nb->...ab", pinv, y_rp[..., s])               # D_l(R)^T
        out.append(np.swapaxes(dt, -1, -2).reshape(batch + (2 * l + 1,) * 2))
    return out


@functools.lru_cache(maxsize=None)
def so3_grid_wigner(L: int, lmax: int) -> tuple[np.ndarray, ...]:
    """[D_l(R) for l < lmax] on the SO(3) grid of bandwidth L, each (2L, 2L, 2L, 2l+1, 2l+1).

    Built as D_l(Rz(α)) D_l(Ry(β)) D_l(Rz(γ)) from the 6L one-angle rotations.
    """
    check_bandwidth(L)
    beta, alpha = dh_angles(L)
    dz = wigner_d_real(lmax, rot_z(alpha))
    dy = wigner_d_real(lmax, rot_y(beta))
    return tuple(np.einsum("iab,jbc,kcd->ijkad", z, y, z) for z, y in zip(dz, dy))


@functools.lru_cache(maxsize=None)
def s2_grid_harmonics(L: int, lmax: int) -> np.ndarray:
    """Real harmonics on the S² grid of bandwidth L, (2L, 2L, lmax²)."""
    check_bandwidth(L)
    return real_sph_harm(lmax, s2_points(L))
