"""SymmetricGram over a real store holding the upper tiles of a known symmetric matrix."""
import numpy as np
import pytest

from raygram.errors import CorruptTile
from raygram.store.gram_store import GramStore, fingerprint
from raygram.store.plan import TilePlan
from raygram.store.symmetric import SymmetricGram

N, T = 23, 5  # 5 x 5 tile grid, the last tile row/column 3 wide


def symmetric_matrix(n, seed):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a + a.T


def filled_store(path, k, t, asymmetric_diagonal_tiles=False):
    """A train-only ntk store whose upper tiles hold k (written through `write_tile`).

    With `asymmetric_diagonal_tiles`, the strictly lower part of each diagonal tile holds
    other values (as a computed tile's round-off would): the view must ignore them.
    """
    n = len(k)
    store = GramStore(path)
    x = np.arange(3.0 * n).reshape(n, 3)
    store.create(fingerprint([{"Dense": {"out_dim": 1}}], ("ntk",), "float64", x, None, t), TilePlan(n, 0, t))
    noise = np.random.default_rng(123)
    for tile in store.plan.tiles():
        values = k[store.plan.region(tile)].copy()
        if asymmetric_diagonal_tiles and tile.i == tile.j:
            values[np.tril_indices(len(values), -1)] += noise.normal(size=len(values) * (len(values) - 1) // 2)
        store.write_tile(tile, {"ntk": values})
    return store


@pytest.fixture(scope="module")
def gram(tmp_path_factory):
    k = symmetric_matrix(N, seed=0)
    store = filled_store(tmp_path_factory.mktemp("sym") / "g", k, T, asymmetric_diagonal_tiles=True)
    return k, store.gram("ntk", "train_train")


def test_view_has_the_shape_dtype_and_tile_chunks(gram):
    k, view = gram
    assert isinstance(view, SymmetricGram)
    assert view.shape == (N, N) and view.ndim == 2 and view.dtype == np.float64 and view.chunks == (T, T)


def test_dense_is_the_symmetric_matrix_from_its_upper_triangle(gram):
    k, view = gram
    dense = view.dense()
    np.testing.assert_array_equal(dense, k)
    np.testing.assert_array_equal(dense, dense.T)
    np.testing.assert_array_equal(np.asarray(view), k)
    np.testing.assert_array_equal(view[...], k)
    np.testing.assert_array_equal(view[:], k)


@pytest.mark.parametrize("rows, cols", [
    (slice(0, 5), slice(0, 5)),      # one diagonal tile
    (slice(2, 9), slice(3, 17)),     # straddles the diagonal and several tiles
    (slice(17, 23), slice(0, 4)),    # strictly below the diagonal
    (slice(0, 4), slice(18, 23)),    # strictly above, ragged last column tile
    (slice(20, 23), slice(20, 23)),  # the ragged corner tile
    (slice(6, 6), slice(0, 23)),     # empty
    (slice(-7, None), slice(None, -20)),
    (slice(11, 40), slice(None)),    # stop past the end, as numpy clips it
])
def test_slices_equal_the_dense_matrix(gram, rows, cols):
    k, view = gram
    got = view[rows, cols]
    assert got.shape == k[rows, cols].shape
    np.testing.assert_array_equal(got, k[rows, cols])


def test_integer_indices_squeeze_like_numpy(gram):
    k, view = gram
    assert view[3, 19] == k[3, 19] and view[19, 3] == k[19, 3] and view[-1, -2] == k[-1, -2]
    np.testing.assert_array_equal(view[7], k[7])
    np.testing.assert_array_equal(view[:, 7], k[:, 7])
    np.testing.assert_array_equal(view[22, 4:12], k[22, 4:12])
    np.testing.assert_array_equal(view[..., 9], k[..., 9])
    for i in range(N):  # every row through the full view, across diagonal tiles
        np.testing.assert_array_equal(view[i, :], k[i])


def test_unsupported_indices_are_refused(gram):
    _, view = gram
    with pytest.raises(IndexError, match="unit-step"):
        view[::2, :]
    with pytest.raises(IndexError, match="out of bounds"):
        view[N, 0]
    with pytest.raises(IndexError, match="too many indices"):
        view[0, 0, 0]
    with pytest.raises(IndexError):
        view[[0, 1], :]


def test_matmat_equals_dense_product(gram):
    k, view = gram
    x = np.random.default_rng(1).normal(size=(N, 3))
    got = view.matmat(x)
    assert got.shape == (N, 3)
    # Tile products summed in another order than k @ x: equal up to float64 round-off.
    np.testing.assert_allclose(got.compute(), k @ x, rtol=0, atol=1e-12 * np.abs(k).sum(1).max() * np.abs(x).max())


def test_to_dask_reads_the_full_symmetric_matrix(gram, tmp_path):
    k, _ = gram
    store = filled_store(tmp_path / "g", k, T, asymmetric_diagonal_tiles=True)
    array = store.to_dask("ntk", "train_train")
    assert array.chunks[0] == (5, 5, 5, 5, 3)
    np.testing.assert_array_equal(array.compute(), k)
    np.testing.assert_array_equal(array[4:13, 2:21].compute(), k[4:13, 2:21])


@pytest.mark.parametrize("n, t", [(1, 1), (7, 7), (7, 10), (12, 4), (13, 4), (9, 1)])
def test_sizes_and_tile_sizes(tmp_path, n, t):
    """Exact multiples, a single tile larger than the matrix, one-entry tiles, and ragged ends."""
    k = symmetric_matrix(n, seed=n * 100 + t)
    view = filled_store(tmp_path / "g", k, t).gram("ntk", "train_train")
    x = np.random.default_rng(2).normal(size=(n, 2))
    np.testing.assert_array_equal(view.dense(), k)
    np.testing.assert_array_equal(view[n // 3:, : n - n // 4], k[n // 3:, : n - n // 4])
    np.testing.assert_allclose(view.matmat(x).compute(), k @ x, rtol=0,
                               atol=1e-12 * np.abs(k).sum(1).max() * np.abs(x).max())


def test_leading_block_view(gram):
    k, view = gram
    for size in (1, 5, 12, N):
        sub = SymmetricGram(view.upper, size)
        assert sub.shape == (size, size)
        np.testing.assert_array_equal(sub.dense(), k[:size, :size])
        np.testing.assert_array_equal(sub[1:, :], k[1:size, :size])
        x = np.random.default_rng(size).normal(size=(size, 2))
        np.testing.assert_allclose(sub.matmat(x).compute(), k[:size, :size] @ x, rtol=0,
                                   atol=1e-12 * np.abs(k).sum(1).max() * np.abs(x).max())
    for bad in (0, N + 1):
        with pytest.raises(ValueError, match="size must be between 1"):
            SymmetricGram(view.upper, bad)


def test_only_stored_tiles_are_read(tmp_path):
    """Values put below the diagonal (where no tile is stored) never reach any read."""
    k = symmetric_matrix(N, seed=4)
    store = filled_store(tmp_path / "g", k, T)
    raw = store.array("ntk", "train_train")
    raw[15:20, 0:10] = 1e300  # tiles (3, 0) and (3, 1): never written by a build
    view = GramStore(tmp_path / "g", read_only=True).gram("ntk", "train_train")
    np.testing.assert_array_equal(view.dense(), k)
    np.testing.assert_array_equal(view[12:23, 0:13], k[12:23, 0:13])
    np.testing.assert_array_equal(view[17], k[17])
    np.testing.assert_array_equal(store.to_dask("ntk", "train_train").compute(), k)
    x = np.random.default_rng(5).normal(size=(N, 2))
    np.testing.assert_allclose(view.matmat(x).compute(), k @ x, rtol=0,
                               atol=1e-12 * np.abs(k).sum(1).max() * np.abs(x).max())


def test_matmat_and_slices_refuse_a_damaged_tile(tmp_path):
    k = symmetric_matrix(N, seed=6)
    store = filled_store(tmp_path / "g", k, T)
    view = store.gram("ntk", "train_train")
    (tmp_path / "g" / "ntk" / "train_train" / "c" / "1" / "3").unlink()  # rows 5:10, columns 15:20
    with pytest.raises(CorruptTile, match=r"tile train_train\[1,3\] of the store .* \(ntk chunk missing\)"):
        view.matmat(np.ones((N, 1))).compute()
    with pytest.raises(CorruptTile, match=r"train_train\[1,3\]"):
        view[16:18, 0:8]  # below the diagonal: read from the stored mirror
    np.testing.assert_array_equal(view[0:5, :], k[0:5])  # tile row 0 is intact
