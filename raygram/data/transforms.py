"""Train/test splits, randomly transformed test sets and per-channel standardisation."""
from __future__ import annotations

import operator

import numpy as np

from raygram.errors import ConfigError


def split(n: int, train_size: int, test_size: int, seed: int,
          labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and test indices into n examples, deterministic in `seed`.

    The train indices come in random order, so every prefix train_idx[:k] is itself a
    uniformly random k-subset of the non-test examples: nested training sizes can share
    one Gram matrix built for the largest. The test indices are sorted.

    With `labels` (shape (n,)), the test set is stratified: class c gets
    floor(test_size·n_c/n) examples, and the leftover slots go to the classes with the
    largest remainders (ties to the smaller class index), so the counts are exact and
    never exceed a class's size. The train set is not stratified.

    Returns:
      (train_idx (train_size,), test_idx (test_size,)), both int64.
    """
    n, train_size, test_size = (operator.index(v) for v in (n, train_size, test_size))
    if train_size < 1 or test_size < 1:
        raise ConfigError(f"train_size and test_size must be >= 1, got train_size={train_size}, "
                          f"test_size={test_size}.")
    if train_size + test_size > n:
        raise ConfigError(f"train_size + test_size = {train_size} + {test_size} = "
                          f"{train_size + test_size} exceeds the n={n} examples.")
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
        test = order[:test_size]
        rest = order[test_size:]
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ConfigError(f"labels must have shape (n,) = ({n},), got {labels.shape}.")
        classes, inverse = np.unique(labels, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(classes))
        quota = test_size * counts // n
        remainder = test_size * counts % n
        leftover = test_size - int(quota.sum())
        by_remainder = sorted(range(len(classes)), key=lambda c: (-remainder[c], c))
        quota[by_remainder[:leftover]] += 1
        test = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[:quota[c]]
                               for c in range(len(classes))])
        is_test = np.zeros(n, dtype=bool)
        is_test[test] = True
        rest = rng.permutation(np.flatnonzero(~is_test))
    return rest[:train_size].astype(np.int64), np.sort(test).astype(np.int64)


def random_group_actions(x: np.ndarray, group: str, seed: int) -> np.ndarray:
    """Each image of x (N, H, W, C) moved by its own uniformly random element of `group`.

    The "rotated test set" of an invariance experiment: with "C4", every output image is
    one of the four np.rot90 copies of its input. The elements are drawn independently
    from np.random.default_rng(seed) and applied as exact pixel permutations
    (`raygram.kernels.transform_images`). Returns an array of x's shape and dtype.
    """
    from raygram.kernels.groups import get_group, transform_images  # JAX only when needed

    x = np.asarray(x)
    if x.ndim != 4:
        raise ConfigError(f"images must have shape (N, H, W, C), got {x.shape}.")
    g = get_group(group)
    g.check_square(x.shape[1], x.shape[2], "images")
    elements = np.random.default_rng(seed).integers(g.order, size=len(x))
    out = np.empty_like(x)
    for element in range(g.order):
        chosen = elements == element
        out[chosen] = transform_images(x[chosen], g, element)
    return out


def standardize(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """(x - mean) / std per channel (last axis), with mean and std taken from x_train only.

    A channel of zero spread gets std 1 (it is only centred). Returns float64 copies of
    (x_train, *others), each of its input's shape; all must share the channel count.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    if x_train.ndim < 2 or len(x_train) == 0:
        raise ConfigError(f"x_train must have shape (N, ..., C) with N >= 1, got {x_train.shape}.")
    axes = tuple(range(x_train.ndim - 1))
    mean = x_train.mean(axis=axes)
    std = x_train.std(axis=axes)
    std = np.where(std > 0, std, 1.0)
    out = []
    for i, x in enumerate((x_train, *others)):
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1:] != mean.shape:
            raise ConfigError(f"array {i} has {x.shape[-1] if x.ndim else 0} channel(s) "
                              f"(shape {x.shape}); x_train has {len(mean)}.")
        out.append((x - mean) / std)
    return tuple(out)
