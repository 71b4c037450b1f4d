"""`GramSource`: the kernel blocks a solver reads, from a Gram store or from arrays in memory.

Per kind ("nngp", "ntk"): the train Gram K (N, N), the test×train block (M, N) and the
test self-kernels k(x, x) (M,). The solver methods see only this class, so one code
path serves a store of any size and arrays in memory. Out of core, K is only touched
through `matmat` (one stored tile row per dask task, each tile read once), `diagonal`
and `rows`; in core, `dense` loads it whole. Every dask computation runs on the active
dask scheduler (threads by default; `dask.config.set(scheduler=...)` picks another,
e.g. Ray's).

Nothing wrong is read. From a store, every tile is checked against its checksum as it
is read (`raygram.store.VerifiedBlock`: `CorruptTile` for a bad one), and K is exactly
symmetric by construction (read from its upper tiles). Blocks handed in as arrays are
checked once by `from_arrays`: finite, and K symmetric to `SYMMETRY_RTOL` of its
largest entry; anything else is bad input (`ConfigError`), as no solver can answer for
a matrix that is not a kernel's Gram.
"""
from __future__ import annotations

import numpy as np

from raygram.errors import ConfigError

__all__ = ["GramSource", "SYMMETRY_RTOL"]

# K_ij and K_ji of a kernel evaluated in floating point differ by round-off: a few units
# of its dtype's eps times the largest entry, a few hundred after tens of layers. 1000 eps
# accepts that and refuses any matrix that is not a Gram (a transposed or mismatched
# block, noise), whose asymmetry is of the order of its entries. The solvers read K as
# symmetric (eigh one triangle, K @ X both), so what is accepted is an input error no
# larger than K's own rounding.
SYMMETRY_RTOL = 1000


def _check_blocks(name: str, blocks: dict, ndim: int) -> None:
    """ConfigError unless each block has `ndim` dimensions and finite values."""
    for kind, block in blocks.items():
        if block.ndim != ndim:
            raise ConfigError(f"{name}[{kind!r}] must have {ndim} dimensions, got shape {block.shape}")
        bad = block.size - int(np.isfinite(block).sum())
        if bad:
            raise ConfigError(f"{name}[{kind!r}] has {bad} non-finite values; a kernel's values are finite")


def _check_symmetric(kind: str, k: np.ndarray, chunk: int) -> None:
    """ConfigError unless K (N, N) is symmetric to SYMMETRY_RTOL · eps · max|K| (compared by row blocks)."""
    if k.shape[0] != k.shape[1]:
        raise ConfigError(f"train[{kind!r}] must be square (N, N), got shape {k.shape}")
    eps = np.finfo(k.dtype).eps if k.dtype.kind == "f" else np.finfo(float).eps
    tolerance = SYMMETRY_RTOL * eps * float(np.abs(k).max(initial=0.0))
    worst = max((float(np.abs(k[start:start + chunk] - k[:, start:start + chunk].T).max())
                 for start in range(0, len(k), chunk)), default=0.0)
    if worst > tolerance:
        raise ConfigError(f"train[{kind!r}] is not symmetric: |K - K.T| reaches {worst:.3e}, beyond round-off "
                          f"({tolerance:.3e}); a kernel's Gram is symmetric")


def _band_rows(gram, index: np.ndarray, chunk: int) -> np.ndarray:
    """Rows `index` (all in one tile row of `chunk` rows) of a `SymmetricGram`, shape (len(index), N)."""
    start = int(index[0]) // chunk * chunk
    return gram[start:min(start + chunk, gram.shape[0]), :][index - start]


class GramSource:
    """Kernel blocks by kind. Build with `from_store` or `from_arrays`.

    Args:
      train: {kind: K (N, N)}: numpy arrays or `SymmetricGram`s.
      test_train: {kind: K_td (M, N)}: numpy or dask arrays; {} without test points.
      test_diag: {kind: k(x, x) (M,)}: arrays or zarr arrays; {} without test points.
      chunk: side of a stored tile (rows of K per dask task).

    Attributes:
      kinds: the kinds held; n: training points N; m: test points M (0 without);
      dtype: K's dtype; chunk: as given.
    """

    def __init__(self, train, test_train, test_diag, chunk: int):
        self.train, self.test_train, self.test_diag = train, test_train, test_diag
        self.chunk = int(chunk)
        self.kinds = tuple(train)
        first = train[self.kinds[0]]
        self.n = first.shape[0]
        self.m = 0 if not test_train else test_train[self.kinds[0]].shape[0]
        self.dtype = np.dtype(first.dtype)

    @classmethod
    def from_store(cls, store, n_train: int | None = None) -> "GramSource":
        """Lazy blocks of a finished `GramStore`.

        Args:
          store: a finished `GramStore` (an incomplete one raises `StoreError`).
          n_train: keep the first n training points only (the Gram's leading block and
            the test block's first columns), so smaller training sets share one stored
            Gram; None: all of them.

        Returns:
          A `GramSource` reading the store lazily, with `chunk` the store's tile size;
          every tile it reads is checked against its checksum (`CorruptTile` for a bad
          one).

        Raises:
          ConfigError: `n_train` outside [1, the store's training points].
          StoreError: an incomplete or damaged store (`CorruptTile` for a tile whose
            values are stored without their checksum).
        """
        from raygram.store.symmetric import SymmetricGram

        plan = store.plan
        if n_train is not None and not 1 <= n_train <= plan.n_train:
            raise ConfigError(f"n_train must be between 1 and the store's {plan.n_train} training points, "
                              f"got {n_train}")
        train = {k: SymmetricGram(store.reader(k, "train_train"), n_train) for k in store.kinds}
        tests = plan.n_test > 0
        return cls(train,
                   {k: store.to_dask(k, "test_train")[:, :n_train] for k in store.kinds} if tests else {},
                   {k: store.gram(k, "test_diag") for k in store.kinds} if tests else {},
                   plan.tile_size)

    @classmethod
    def from_arrays(cls, train: dict, test_train: dict | None = None, test_diag: dict | None = None,
                    chunk: int = 1024) -> "GramSource":
        """Blocks held in memory.

        Args:
          train: {kind: K (N, N)}, array-likes.
          test_train: {kind: K_td (M, N)}, or None without test points.
          test_diag: {kind: k(x, x) (M,)}, or None without test points.
          chunk: rows of K per dask task when K is read through dask.

        Returns:
          A `GramSource` over numpy copies (or views) of the blocks.

        Raises:
          ConfigError: a block with non-finite values or the wrong number of
            dimensions, or a K that is not square and symmetric (to round-off, see
            `SYMMETRY_RTOL`).
        """
        as_np = lambda d: {k: np.asarray(v) for k, v in (d or {}).items()}  # noqa: E731
        train, test_train, test_diag = as_np(train), as_np(test_train), as_np(test_diag)
        for name, blocks, ndim in (("train", train, 2), ("test_train", test_train, 2), ("test_diag", test_diag, 1)):
            _check_blocks(name, blocks, ndim)
        for kind, k in train.items():
            _check_symmetric(kind, k, chunk)
        return cls(train, test_train, test_diag, chunk)

    def require(self, kinds, test: bool) -> None:
        """Check that the blocks a solve reads are here.

        Args:
          kinds: kind names the solve reads.
          test: True when it also reads the test blocks.

        Raises:
          ConfigError: a kind, or the test blocks, are missing.
        """
        missing = [k for k in kinds if k not in self.kinds]
        if missing:
            raise ConfigError(f"the Gram source holds kinds {list(self.kinds)}, not {missing}")
        if test and not self.test_train:
            raise ConfigError("test predictions need the test blocks; the build had no x_test")

    # -- train block --------------------------------------------------------------------------
    def dense(self, kind: str) -> np.ndarray:
        """K as one numpy array: N² values in memory.

        Args:
          kind: "nngp" or "ntk".

        Returns:
          K, shape (N, N).
        """
        source = self.train[kind]
        return source.dense() if hasattr(source, "dense") else np.asarray(source)

    def to_dask(self, kind: str, block: str = "train"):
        """A block as a dask array.

        Args:
          kind: "nngp" or "ntk".
          block: "train" for K (N, N), anything else for K_td (M, N).

        Returns:
          A dask array chunked as stored (numpy blocks: `chunk`-sided chunks).
        """
        import dask.array as da

        source = self.train[kind] if block == "train" else self.test_train[kind]
        if isinstance(source, da.Array):
            return source
        if isinstance(source, np.ndarray):
            return da.from_array(source, chunks=self.chunk)
        return da.from_array(source, chunks=source.chunks, asarray=True, inline_array=True,
                             name=f"raygram-{block}-{kind}-{id(source):x}")

    def matmat(self, kind: str, x: np.ndarray) -> np.ndarray:
        """K @ x, reading each stored tile of K once (`SymmetricGram.matmat`).

        Args:
          kind: "nngp" or "ntk".
          x: shape (N, R).

        Returns:
          K @ x, shape (N, R).
        """
        source = self.train[kind]
        if isinstance(source, np.ndarray):
            return source @ x
        return source.matmat(x).compute()

    def diagonal(self, kind: str) -> np.ndarray:
        """The training points' self-kernels k(x_i, x_i), reading only the diagonal tiles.

        Args:
          kind: "nngp" or "ntk".

        Returns:
          diag(K), shape (N,).
        """
        source = self.train[kind]
        if isinstance(source, np.ndarray):
            return np.diagonal(source).copy()
        out = np.empty(self.n, self.dtype)
        for start in range(0, self.n, self.chunk):
            stop = min(start + self.chunk, self.n)
            out[start:stop] = np.diagonal(source[start:stop, start:stop])
        return out

    def rows(self, kind: str, index: np.ndarray) -> np.ndarray:
        """Rows of K (equal to its columns K[:, index] transposed), reading each tile row once,
        the tile rows as tasks on the active dask scheduler.

        Args:
          kind: "nngp" or "ntk".
          index: integer row indices, shape (k,).

        Returns:
          K[index, :], shape (k, N).
        """
        import dask

        source, index = self.train[kind], np.asarray(index, int)
        if isinstance(source, np.ndarray):
            return source[index]
        out = np.empty((len(index), self.n), self.dtype)
        bands = index // self.chunk
        picks = [bands == band for band in np.unique(bands)]
        # One read per tile row (a row costs its whole tiles anyway), the rows as dask tasks.
        tasks = [dask.delayed(_band_rows)(source, index[pick], self.chunk) for pick in picks]
        for pick, rows in zip(picks, dask.compute(*tasks)):
            out[pick] = rows
        return out

    # -- test blocks --------------------------------------------------------------------------
    def cross_matmat(self, kind: str, x: np.ndarray) -> np.ndarray:
        """K_td @ x, reading the test×train block tile by tile.

        Args:
          kind: "nngp" or "ntk".
          x: shape (N, R).

        Returns:
          K_td @ x, shape (M, R).
        """
        if isinstance(self.test_train[kind], np.ndarray):
            return self.test_train[kind] @ x
        return (self.to_dask(kind, "test") @ x).compute()

    def cross_rowdot(self, kind: str, x: np.ndarray) -> np.ndarray:
        """diag(K_td @ x) = Σ_n K_td[m, n] x[n, m], reading the test×train block tile by tile.

        Args:
          kind: "nngp" or "ntk".
          x: shape (N, M).

        Returns:
          diag(K_td @ x), shape (M,).
        """
        if isinstance(self.test_train[kind], np.ndarray):
            return np.einsum("mn,nm->m", self.test_train[kind], x)
        return (self.to_dask(kind, "test") * x.T).sum(axis=1).compute()

    def self_kernel(self, kind: str) -> np.ndarray:
        """The test points' self-kernels.

        Args:
          kind: "nngp" or "ntk".

        Returns:
          k(x, x) of each test point, shape (M,).
        """
        return np.asarray(self.test_diag[kind][...])
