"""GramSource from a store and from arrays: the same blocks, read the same way."""
import re

import numpy as np
import pytest

from raygram.errors import ConfigError, CorruptTile, StoreError
from raygram.solve.source import GramSource
from raygram.store.gram_store import GramStore, VerifiedBlock, fingerprint
from raygram.store.plan import Tile, TilePlan

N, M, T = 13, 6, 4  # train grid 4 (last tile 1 wide), test grid 2 (last tile 2 rows)
KINDS = ("nngp", "ntk")


def blocks(n, m, seed=0):
    """{kind: (train Gram, test×train, test diagonal)} with distinct random values per kind."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind in KINDS:
        g = rng.normal(size=(n + m, n + 3))
        full = g @ g.T  # PSD, as a kernel is
        out[kind] = (full[:n, :n], full[n:, :n], np.diagonal(full[n:, n:]).copy())
    return out


def fill_store(path, values, n, m, t, kinds=KINDS):
    store = GramStore(path)
    x = np.arange(2.0 * n).reshape(n, 2)
    x_test = np.arange(2.0 * m).reshape(m, 2) + 0.5 if m else None
    store.create(fingerprint([{"Dense": {"out_dim": 1}}], kinds, "float64", x, x_test, t), TilePlan(n, m, t))
    index = {"train_train": 0, "test_train": 1, "test_diag": 2}
    for tile in store.plan.tiles():
        region = store.plan.region(tile)
        store.write_tile(tile, {k: values[k][index[tile.block]][region] for k in kinds})
    return GramStore(path, read_only=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    values = blocks(N, M)
    store = fill_store(tmp_path_factory.mktemp("source") / "g", values, N, M, T)
    in_memory = GramSource.from_arrays({k: v[0] for k, v in values.items()},
                                       {k: v[1] for k, v in values.items()},
                                       {k: v[2] for k, v in values.items()}, chunk=T)
    return values, store, GramSource.from_store(store), in_memory


def product_atol(a, x):
    """Round-off allowance of a float64 product summed in another order: 1e-12 · max_i Σ_j |a_ij||x_j|."""
    return 1e-12 * (np.abs(a) @ np.abs(x)).max()


def test_attributes(sources):
    _, _, stored, memory = sources
    for source in (stored, memory):
        assert source.kinds == KINDS and source.n == N and source.m == M
        assert source.dtype == np.float64 and source.chunk == T


def test_dense_diagonal_rows(sources):
    values, _, stored, memory = sources
    rng = np.random.default_rng(1)
    for kind in KINDS:
        k = values[kind][0]
        for source in (stored, memory):
            np.testing.assert_array_equal(source.dense(kind), k)
            np.testing.assert_array_equal(source.diagonal(kind), np.diagonal(k))
            for index in (np.array([0, 12, 5, 5, 7]), np.arange(N), rng.permutation(N)[:4], np.array([], int)):
                got = source.rows(kind, index)
                assert got.shape == (len(index), N)
                np.testing.assert_array_equal(got, k[index])


def test_products(sources):
    values, _, stored, memory = sources
    rng = np.random.default_rng(2)
    x, y, z = rng.normal(size=(N, 3)), rng.normal(size=(N, M)), rng.normal(size=(N, 1))
    for kind in KINDS:
        k, cross, diag = values[kind]
        for source in (stored, memory):
            np.testing.assert_allclose(source.matmat(kind, x), k @ x, rtol=0, atol=product_atol(k, x))
            np.testing.assert_allclose(source.matmat(kind, z), k @ z, rtol=0, atol=product_atol(k, z))
            np.testing.assert_allclose(source.cross_matmat(kind, x), cross @ x, rtol=0,
                                       atol=product_atol(cross, x))
            want = np.array([cross[m] @ y[:, m] for m in range(M)])
            np.testing.assert_allclose(source.cross_rowdot(kind, y), want, rtol=0,
                                       atol=1e-12 * (np.abs(cross) * np.abs(y.T)).sum(1).max())
            np.testing.assert_array_equal(source.self_kernel(kind), diag)


def test_to_dask_blocks(sources):
    values, _, stored, memory = sources
    for kind in KINDS:
        for source in (stored, memory):
            np.testing.assert_array_equal(source.to_dask(kind).compute(), values[kind][0])
            np.testing.assert_array_equal(source.to_dask(kind, "test").compute(), values[kind][1])


@pytest.mark.parametrize("n_train", [1, 4, 9, N])
def test_n_train_keeps_a_prefix_of_the_store(sources, n_train):
    values, store, _, _ = sources
    source = GramSource.from_store(store, n_train=n_train)
    assert source.n == n_train and source.m == M
    rng = np.random.default_rng(n_train)
    x, y = rng.normal(size=(n_train, 2)), rng.normal(size=(n_train, M))
    index = rng.integers(0, n_train, size=3)
    for kind in KINDS:
        k, cross, diag = values[kind][0][:n_train, :n_train], values[kind][1][:, :n_train], values[kind][2]
        np.testing.assert_array_equal(source.dense(kind), k)
        np.testing.assert_array_equal(source.diagonal(kind), np.diagonal(k))
        np.testing.assert_array_equal(source.rows(kind, index), k[index])
        np.testing.assert_allclose(source.matmat(kind, x), k @ x, rtol=0, atol=product_atol(k, x))
        np.testing.assert_allclose(source.cross_matmat(kind, x), cross @ x, rtol=0, atol=product_atol(cross, x))
        np.testing.assert_allclose(source.cross_rowdot(kind, y), np.einsum("mn,nm->m", cross, y), rtol=0,
                                   atol=1e-12 * (np.abs(cross) * np.abs(y.T)).sum(1).max())
        np.testing.assert_array_equal(source.self_kernel(kind), diag)
        np.testing.assert_array_equal(source.to_dask(kind, "test").compute(), cross)


@pytest.mark.parametrize("n_train", [0, N + 1])
def test_n_train_out_of_range(sources, n_train):
    _, store, _, _ = sources
    with pytest.raises(ValueError, match=f"n_train must be between 1 and the store's {N}"):
        GramSource.from_store(store, n_train=n_train)


def test_require(sources, tmp_path):
    _, _, stored, memory = sources
    for source in (stored, memory):
        source.require(["ntk"], test=True)
        source.require(KINDS, test=False)
        with pytest.raises(ValueError, match=r"holds kinds \['nngp', 'ntk'\], not \['gp'\]"):
            source.require(["ntk", "gp"], test=False)
    # A store built without test points: train blocks only, test predictions refused.
    values = blocks(7, 0, seed=3)
    train_only = GramSource.from_store(fill_store(tmp_path / "g", values, 7, 0, 3, kinds=("ntk",)))
    assert train_only.kinds == ("ntk",) and train_only.m == 0
    np.testing.assert_array_equal(train_only.dense("ntk"), values["ntk"][0])
    train_only.require(["ntk"], test=False)
    with pytest.raises(ValueError, match="test predictions need the test blocks"):
        train_only.require(["ntk"], test=True)
    with pytest.raises(ValueError, match=r"not \['nngp'\]"):
        train_only.require(["nngp"], test=False)
    arrays_only = GramSource.from_arrays({"ntk": values["ntk"][0]})
    assert arrays_only.m == 0
    with pytest.raises(ValueError, match="test predictions need the test blocks"):
        arrays_only.require(["ntk"], test=True)


def test_incomplete_store_is_refused(tmp_path):
    values = blocks(N, M, seed=4)
    store = fill_store(tmp_path / "g", values, N, M, T)
    GramStore(tmp_path / "g").forget_tiles([Tile("train_train", 1, 2)])
    with pytest.raises(StoreError, match="incomplete: 1 tiles not written"):
        GramSource.from_store(store)


SOURCE_READS = {
    "dense": lambda s, kind: s.dense(kind),
    "diagonal": lambda s, kind: s.diagonal(kind),
    "rows": lambda s, kind: s.rows(kind, np.array([0, 6])),
    "matmat": lambda s, kind: s.matmat(kind, np.ones((N, 2))),
    "to_dask": lambda s, kind: s.to_dask(kind).compute(),
    "cross_matmat": lambda s, kind: s.cross_matmat(kind, np.ones((N, 2))),
    "cross_rowdot": lambda s, kind: s.cross_rowdot(kind, np.ones((N, M))),
    "self_kernel": lambda s, kind: s.self_kernel(kind),
}
# The damaged tile of each read: every read of its block touches it.
DAMAGED = {"train_train": Tile("train_train", 1, 1), "test_train": Tile("test_train", 1, 0),
           "test_diag": Tile("test_diag", 1)}


def damage(root, tile, how):
    chunk = root.joinpath("ntk", tile.block, "c", *map(str, tile.index))
    if how == "deleted data chunk":
        chunk.unlink()
    elif how == "flipped byte":  # a byte of the tile's first value: an edge tile's chunk also holds
        data = bytearray(chunk.read_bytes())  # bytes outside the array, which no read uses
        data[3] ^= 0xFF
        chunk.write_bytes(bytes(data))
    else:  # deleted checksum chunk
        root.joinpath("tiles", tile.block, "c", *map(str, tile.index), "0").unlink()


@pytest.mark.parametrize("how", ["deleted data chunk", "flipped byte", "deleted checksum chunk"])
@pytest.mark.parametrize("read", SOURCE_READS)
def test_every_read_of_a_damaged_store_raises_corrupt_tile(tmp_path, how, read):
    values = blocks(N, M, seed=5)
    fill_store(tmp_path / "g", values, N, M, T)
    block = {"cross_matmat": "test_train", "cross_rowdot": "test_train", "self_kernel": "test_diag"}.get(
        read, "train_train")
    tile = DAMAGED[block]
    damage(tmp_path / "g", tile, how)
    with pytest.raises(CorruptTile, match=rf"tile {re.escape(str(tile))} of the store .*g is corrupt"):
        source = GramSource.from_store(GramStore(tmp_path / "g", read_only=True))
        SOURCE_READS[read](source, "ntk")
    if how != "deleted checksum chunk":  # (that one is refused when the source is made)
        source = GramSource.from_store(GramStore(tmp_path / "g", read_only=True))
        np.testing.assert_array_equal(SOURCE_READS["dense"](source, "nngp"), values["nngp"][0])  # the other kind


def test_rows_reads_each_tile_row_once(sources, monkeypatch):
    """rows() groups its indices by tile row: five rows in three tile rows cost three tile-row reads."""
    values, store, _, _ = sources
    source = GramSource.from_store(store)
    reads = []
    original = VerifiedBlock.__getitem__
    monkeypatch.setattr(VerifiedBlock, "__getitem__", lambda self, key: reads.append(key) or original(self, key))
    got = source.rows("ntk", np.array([5, 1, 6, 2, 12]))
    np.testing.assert_array_equal(got, values["ntk"][0][[5, 1, 6, 2, 12]])
    # tile rows 0, 1, 3: each at most three reads (left of, on, right of the diagonal tile); row by
    # row it would be at least two reads per row
    assert len(reads) <= 3 * 3, reads


@pytest.mark.parametrize("bad, message", [
    ("nan", r"train\['ntk'\] has 1 non-finite values"),
    ("inf_test", r"test_train\['ntk'\] has 1 non-finite values"),
    ("nan_diag", r"test_diag\['ntk'\] has 1 non-finite values"),
    ("asymmetric", r"train\['ntk'\] is not symmetric: \|K - K.T\| reaches"),
    ("transposed_block", r"train\['ntk'\] must be square"),
    ("vector", r"train\['ntk'\] must have 2 dimensions"),
])
def test_from_arrays_refuses_what_is_not_a_kernel(bad, message):
    values = blocks(N, M, seed=6)
    train, cross, diag = (v.copy() for v in values["ntk"])
    if bad == "nan":
        train[3, 4] = np.nan
    elif bad == "inf_test":
        cross[0, 0] = np.inf
    elif bad == "nan_diag":
        diag[2] = np.nan
    elif bad == "asymmetric":
        train[3, 4] *= 1 + 1e-6
    elif bad == "transposed_block":
        train = cross.T
    else:
        train = diag
    with pytest.raises(ConfigError, match=message):
        GramSource.from_arrays({"ntk": train}, {"ntk": cross}, {"ntk": diag}, chunk=T)


def test_from_arrays_accepts_round_off_asymmetry():
    """A Gram whose triangles differ by rounding (as a kernel evaluated in floating point) is accepted;
    also in float32, whose tolerance scales with its own eps."""
    k = blocks(N, 0, seed=7)["ntk"][0]
    eps = np.finfo(float).eps
    noisy = k + np.triu(np.random.default_rng(8).uniform(-20, 20, size=k.shape) * eps * np.abs(k).max(), 1)
    assert np.abs(noisy - noisy.T).max() > 10 * eps * np.abs(k).max()
    GramSource.from_arrays({"ntk": noisy})
    GramSource.from_arrays({"ntk": noisy.astype(np.float32)})
