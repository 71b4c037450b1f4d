"""The store on object storage: a build into s3:// against an S3-compatible server on 127.0.0.1.

The server is moto's (a real HTTP S3 API in a thread of this process); workers in other
processes reach it through s3fs exactly as they would reach S3 or MinIO on a cluster.
"""
import logging
import socket
import time

import numpy as np
import pytest

from builds import CNN, images, read_blocks
from raygram.config import TilingOptions
from raygram.build.lease import BuildLease
from raygram.build.scheduler import build_gram
from raygram.store.gram_store import GramStore
from raygram.errors import FingerprintMismatch
from raygram.store.plan import Tile

N, M = 11, 5


@pytest.fixture(scope="module")
def s3_options():
    import boto3  # installed with moto (README command 1 installs the test extra)
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                 region_name="us-east-1").create_bucket(Bucket="grams")
    yield {"endpoint_url": endpoint, "key": "test", "secret": "test",
           "client_kwargs": {"region_name": "us-east-1"}}
    server.stop()


def test_build_resume_verify_and_read_on_s3(ray_address, tmp_path, s3_options):
    x, x_test = images(N), images(M, seed=1)
    url = "s3://grams/cnn"
    build_gram(tmp_path / "local", CNN, x, x_test, progress=False, tiling=TilingOptions(tile_size=4, workers=1))
    reference = read_blocks(GramStore(tmp_path / "local"))

    report = build_gram(url, CNN, x, x_test, storage_options=s3_options,
                        progress=False, tiling=TilingOptions(tile_size=4, workers=2))
    store = GramStore(url, s3_options)
    assert report.tiles_computed == store.status()["tiles_total"] == 6 + 6 + 2
    got = read_blocks(store)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))
    np.testing.assert_array_equal(store.to_dask("nngp").compute(), reference[("nngp", "train_train")])
    assert BuildLease(store).holder() is None

    # Resume: forget two tiles, rebuild computes exactly those; verify finds a damaged chunk.
    store.forget_tiles([Tile("train_train", 0, 2), Tile("test_diag", 1)])
    computed = []
    build_gram(url, CNN, x, x_test, storage_options=s3_options, progress=False,
               on_tile=lambda r: computed.append(r["tile"]), tiling=TilingOptions(workers=1))
    assert sorted(computed) == [Tile("test_diag", 1), Tile("train_train", 0, 2)]
    store.set_bytes("ntk/test_train/c/0/1", store.get_bytes("ntk/test_train/c/0/0"))
    assert store.verify() == {Tile("test_train", 0, 1): "ntk chunk checksum mismatch"}
    build_gram(url, CNN, x, x_test, storage_options=s3_options, progress=False, verify=True, tiling=TilingOptions(workers=1))
    assert store.verify() == {}
    np.testing.assert_array_equal(read_blocks(store)[("ntk", "test_train")], reference[("ntk", "test_train")])

    with pytest.raises(FingerprintMismatch):
        build_gram(url, CNN, x[:-1], x_test, storage_options=s3_options, progress=False)


def test_verified_reads_status_and_lease_on_s3(s3_options):
    """Damage seen through the object store: reads raise CorruptTile, status lists it, an unreadable
    lease names the command that deletes it, and a prefix holding other objects is no store."""
    from raygram.build.lease import LOCK_KEY
    from raygram.errors import CorruptTile, StoreError, StoreLocked
    from raygram.store.gram_store import fingerprint
    from raygram.store.plan import TilePlan

    url = "s3://grams/verified"
    store = GramStore(url, s3_options)
    x = np.arange(14.0).reshape(7, 2)
    store.create(fingerprint([{"Dense": {"out_dim": 1}}], ("ntk",), "float64", x, None, 3), TilePlan(7, 0, 3))
    k = np.random.default_rng(0).normal(size=(7, 7))
    k = k @ k.T
    for tile in store.plan.tiles():
        store.write_tile(tile, {"ntk": k[store.plan.region(tile)]})
    np.testing.assert_array_equal(GramStore(url, s3_options, read_only=True).gram("ntk").dense(), k)
    store.delete_key("ntk/train_train/c/0/2")
    reader = GramStore(url, s3_options, read_only=True)
    with pytest.raises(CorruptTile, match=r"tile train_train\[0,2\] of the store s3://grams/verified .*ntk chunk "
                                          "missing"):
        reader.to_dask("ntk").compute()
    assert reader.status()["corrupt_tiles"] == {"train_train[0,2]": "ntk chunk missing"}

    store.set_bytes(LOCK_KEY, b"not a lease")
    assert abs(store.modified(LOCK_KEY) - time.time()) < 300  # the server's clock, roughly ours
    with pytest.raises(StoreLocked, match=rf"aws s3 rm {url}/raygram.lock --endpoint-url {s3_options['endpoint_url']}"):
        BuildLease(store).acquire()
    assert store.get_bytes(LOCK_KEY) == b"not a lease"

    GramStore("s3://grams/other", s3_options).set_bytes("data.csv", b"1,2")
    with pytest.raises(StoreError, match="holds 'data.csv' but no zarr.json"):
        GramStore("s3://grams/other", s3_options).plan
