"""`prepare_data` standardises with the whole training pool's statistics: adding a training size to
the list does not change any input (so the accuracy at n = 50 does not change either)."""
from __future__ import annotations

import numpy as np

from raygram.config import DataOptions
from raygram.data import load_images, prepare_data, split
from raygram.data.prepare import pool_statistics


def test_inputs_do_not_depend_on_the_training_sizes_listed():
    small = prepare_data(DataOptions(source="digits", train_sizes=(50,), test_size=200, validation_size=20))
    large = prepare_data(DataOptions(source="digits", train_sizes=(50, 400), test_size=200, validation_size=20))
    assert np.array_equal(small.x_train, large.x_train[:50]) and np.array_equal(small.x_test, large.x_test)
    assert np.array_equal(small.labels_train, large.labels_train[:50])


def test_statistics_are_those_of_every_example_not_held_out():
    dataset = load_images("digits")
    _, held = split(len(dataset.labels), 10, 220, 0, labels=dataset.labels)
    pool = np.setdiff1d(np.arange(len(dataset.labels)), held)
    mean, std = pool_statistics(dataset.x, pool)
    assert np.allclose(mean, dataset.x[pool].mean()) and np.allclose(std, dataset.x[pool].std())
    data = prepare_data(DataOptions(source="digits", train_sizes=(10,), test_size=200, validation_size=20))
    assert np.allclose(data.x_train, (dataset.x[split(len(dataset.labels), 10, 220, 0, labels=dataset.labels)[0]]
                                      - mean) / std)


def test_pool_statistics_in_chunks_and_a_constant_channel(monkeypatch):
    import raygram.data.prepare as prepare

    x = np.random.default_rng(1).normal(3.0, 2.0, size=(50, 4, 4, 2))
    x[..., 1] = 7.0
    pool = np.arange(5, 50)
    monkeypatch.setattr(prepare, "POOL_CHUNK", 7)
    mean, std = pool_statistics(x, pool)
    assert np.allclose(mean, x[pool].reshape(-1, 2).mean(axis=0))
    assert np.isclose(std[0], x[pool][..., 0].std()) and std[1] == 1.0  # only centred
