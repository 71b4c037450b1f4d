"""`GramSource`: the kernel blocks a solver reads, from a Gram store or from arrays in memory.

Per kind ("nngp", "ntk"): the train Gram K (N, N), the test×train block (M, N) and the
test self-kernels k(x, x) (M,). Out of core, K is only touched through `matmat`
(one stored tile row per dask task, each tile read once), `diagonal` and `rows`; in
core, `dense` loads it whole. Every dask computation runs on the active dask scheduler
(threads by default; `dask.config.set(scheduler=...)` picks another, e.g. Ray's).
"""
from __future__ import annotations

import numpy as np


class GramSource:
    """Kernel blocks by kind. Build with `from_store` or `from_arrays`."""

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
        """Lazy blocks of a finished `GramStore` (refuses an incomplete one).

        `n_train` keeps the first n training points only (the Gram's leading block and the
        test block's first columns): smaller training sets share one stored Gram.
        """
        from .symmetric import SymmetricGram

        plan = store.plan
        if n_train is not None and not 1 <= n_train <= plan.n_train:
            raise ValueError(f"n_train must be between 1 and the store's {plan.n_train} training points, "
                             f"got {n_train}")
        train = {k: SymmetricGram(store.gram(k, "train_train").upper, n_train) for k in store.kinds}
        tests = plan.n_test > 0
        return cls(train,
                   {k: store.to_dask(k, "test_train")[:, :n_train] for k in store.kinds} if tests else {},
                   {k: store.gram(k, "test_diag") for k in store.kinds} if tests else {},
                   plan.tile_size)

    @classmethod
    def from_arrays(cls, train: dict, test_train: dict | None = None, test_diag: dict | None = None,
                    chunk: int = 1024) -> "GramSource":
        """Blocks held in memory (numpy arrays keyed by kind)."""
        as_np = lambda d: {k: np.asarray(v) for k, v in (d or {}).items()}  # noqa: E731
        return cls(as_np(train), as_np(test_train), as_np(test_diag), chunk)

    def require(self, kinds, test: bool) -> None:
        missing = [k for k in kinds if k not in self.kinds]
        if missing:
            raise ValueError(f"the Gram source holds kinds {list(self.kinds)}, not {missing}")
        if test and not self.test_train:
            raise ValueError("test predictions need the test blocks; the build had no x_test")

    # -- train block --------------------------------------------------------------------------
    def dense(self, kind: str) -> np.ndarray:
        """K as one numpy array (N, N): N² values in memory."""
        source = self.train[kind]
        return source.dense() if hasattr(source, "dense") else np.asarray(source)

    def to_dask(self, kind: str, block: str = "train"):
        import dask.array as da

        source = self.train[kind] if block == "train" else self.test_train[kind]
        if isinstance(source, da.Array):
            return source
        if isinstance(source, np.ndarray):
            return da.from_array(source, chunks=self.chunk)
        return da.from_array(source, chunks=source.chunks, asarray=True, inline_array=True,
                             name=f"raygram-{block}-{kind}-{id(source):x}")

    def matmat(self, kind: str, x: np.ndarray) -> np.ndarray:
        """K @ x for x (N, R), reading each stored tile of K once (`SymmetricGram.matmat`)."""
        source = self.train[kind]
        if isinstance(source, np.ndarray):
            return source @ x
        return source.matmat(x).compute()

    def diagonal(self, kind: str) -> np.ndarray:
        """k(x_i, x_i) for the training points (N,), reading only the diagonal tiles."""
        source = self.train[kind]
        if isinstance(source, np.ndarray):
            return np.diagonal(source).copy()
        out = np.empty(self.n, self.dtype)
        for start in range(0, self.n, self.chunk):
            stop = min(start + self.chunk, self.n)
            out[start:stop] = np.diagonal(source[start:stop, start:stop])
        return out

    def rows(self, kind: str, index: np.ndarray) -> np.ndarray:
        """K[index, :] (len(index), N); equal to the columns K[:, index] transposed."""
        source = self.train[kind]
        if isinstance(source, np.ndarray):
            return source[np.asarray(index)]
        return np.stack([source[int(i), :] for i in index]) if len(index) else np.empty((0, self.n))

    # -- test blocks --------------------------------------------------------------------------
    def cross_matmat(self, kind: str, x: np.ndarray) -> np.ndarray:
        """K_td @ x (M, R) for x (N, R), reading the test×train block tile by tile."""
        if isinstance(self.test_train[kind], np.ndarray):
            return self.test_train[kind] @ x
        return (self.to_dask(kind, "test") @ x).compute()

    def cross_rowdot(self, kind: str, x: np.ndarray) -> np.ndarray:
        """diag(K_td @ x) (M,) for x (N, M): Σ_n K_td[m, n] x[n, m], tile by tile."""
        if isinstance(self.test_train[kind], np.ndarray):
            return np.einsum("mn,nm->m", self.test_train[kind], x)
        return (self.to_dask(kind, "test") * x.T).sum(axis=1).compute()

    def self_kernel(self, kind: str) -> np.ndarray:
        return np.asarray(self.test_diag[kind][...])
