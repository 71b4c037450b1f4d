"""Molecular Grams built ragged (each tile on its real atoms only) equal the padded computation.

A kernel made by `AtomSum` is built by `raygram.kernels.atoms.RaggedTiles`: the tile's atoms
laid end to end, the per-atom kernel summed chunk pair by chunk pair into the molecules'
entries. The values are the padded kernel's summed in another order: float64 round-off
(measured 5e-16 relative), held to 1e-12. Diagonal tiles are stored exactly symmetric.
"""
import numpy as np
import pytest
import zarr

from raygram._neural_tangents import stax
from raygram.build.kernel_source import kernel_source
from raygram.build.scheduler import build_gram
from raygram.build.worker import TileWorker
from raygram.config import TilingOptions
from raygram.kernels.atoms import AtomSum, atom_counts, pad_molecules
from raygram.store.gram_store import GramStore

SPEC = ["AtomSum", "Flatten", {"Dense": {"out_dim": 1, "W_std": 1.5, "b_std": 0.1}}, "Erf",
        {"Dense": {"out_dim": 1, "W_std": 1.0, "b_std": 0.1}}]


def per_atom():
    """The per-atom network of SPEC, from the stax constructors (the reference)."""
    return stax.serial(stax.Flatten(), stax.Dense(1, W_std=1.5, b_std=0.1), stax.Erf(),
                       stax.Dense(1, W_std=1.0, b_std=0.1))


def molecules(sizes, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 3, 3, 2)) for n in sizes]


TRAIN = [3, 9, 1, 5, 12, 7, 2, 6, 4, 11, 1, 3, 8]  # 13 molecules of 1 to 12 atoms
TEST = [2, 12, 5, 1, 7]


@pytest.mark.parametrize("python_kernel, tile_size, workers", [(False, 4, 2), (True, 5, 1)],
                         ids=["spec-t4-w2", "python-t5-w1"])
def test_ragged_build_equals_the_padded_kernel(ray_address, tmp_path, python_kernel, tile_size, workers):
    padded = pad_molecules(molecules(TRAIN, 0) + molecules(TEST, 1))
    x, x_test = padded[:len(TRAIN)], padded[len(TRAIN):]
    reference = AtomSum(*per_atom())
    architecture, name = (reference, "atom-mlp") if python_kernel else (SPEC, None)
    report = build_gram(tmp_path / "gram", architecture, x, x_test, name=name, progress=False,
                        tiling=TilingOptions(tile_size=tile_size, workers=workers))
    # Three programs per worker (cross, square, test self-kernels); a worker still compiling when
    # the tiles ran out has no count.
    assert {w["executables"] for w in report.workers if w["tiles"]} == {3}
    store = GramStore(tmp_path / "gram")
    kinds = ("nngp", "ntk")
    train, test = reference[2](x, None, kinds), reference[2](x_test, x, kinds)
    for kind in kinds:
        test_diag = np.array([reference[2](m[None], None, kind)[0, 0] for m in x_test])
        for block, want in (("train_train", getattr(train, kind)), ("test_train", getattr(test, kind)),
                            ("test_diag", test_diag)):
            want, got = np.asarray(want), np.asarray(store.gram(kind, block)[...])
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                                       err_msg=f"{kind} {block}")
        stored = zarr.open_group(tmp_path / "gram", mode="r")[f"{kind}/train_train"]
        for start in range(0, len(x), tile_size):  # diagonal tiles as stored, the edge tile too
            tile = stored[start:start + tile_size, start:start + tile_size]
            np.testing.assert_array_equal(tile, tile.T)


def test_memory_model_of_a_molecular_kernel_bounds_its_programs(ray_address):
    """The worker's memory model (fitted quadratic through sizes 2, 4 and 8, as the scheduler fits
    it) bounds, at larger tiles, the ragged cross and square programs and the padded test
    self-kernels, and it is far below the padded tile's."""
    import jax

    from raygram.build.worker import _peak_bytes

    x = pad_molecules(molecules(TRAIN * 4, 2))
    x_test = pad_molecules(molecules(TEST, 3), atoms=x.shape[1])
    worker = TileWorker(kernel_source(SPEC), ("nngp", "ntk"), "float64", x, x_test)
    sizes = (2, 4, 8)
    model = np.poly1d(np.polyfit(sizes, worker.tile_memory(sizes), 2))
    for t in (16, 40):
        ragged = worker._ragged(t)
        assert ragged.chunk == -(-t * atom_counts(x).mean() // 12)
        side = ragged.shapes(worker._atom_shape(), worker.dtype)
        whole = jax.ShapeDtypeStruct((t,) + x.shape[1:], worker.dtype)
        programs = [_peak_bytes(jax.jit(ragged.cross).lower(*side, *side)),
                    _peak_bytes(jax.jit(ragged.square).lower(*side)),
                    _peak_bytes(jax.jit(worker._self_kernel()).lower(whole))]
        assert max(programs) <= model(t)
        padded = _peak_bytes(jax.jit(lambda a, b: worker.kernel_fn(a, b, worker.kinds)).lower(whole, whole))
        assert model(t) < padded
