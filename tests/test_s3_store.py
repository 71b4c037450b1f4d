"""The store on object storage: a build into s3:// against an S3-compatible server on 127.0.0.1.

The server is moto's (a real HTTP S3 API in a thread of this process); workers in other
processes reach it through s3fs exactly as they would reach S3 or MinIO on a cluster.
"""
import logging
import socket

import numpy as np
import pytest

from builds import CNN, images, read_blocks
from raygram.lock import BuildLease
from raygram.scheduler import build_gram
from raygram.store import FingerprintMismatch, GramStore
from raygram.tiling import Tile

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
    build_gram(tmp_path / "local", CNN, x, x_test, tile_size=4, workers=1, progress=False)
    reference = read_blocks(GramStore(tmp_path / "local"))

    report = build_gram(url, CNN, x, x_test, tile_size=4, workers=2, storage_options=s3_options,
                        progress=False)
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
    build_gram(url, CNN, x, x_test, workers=1, storage_options=s3_options, progress=False,
               on_tile=lambda r: computed.append(r["tile"]))
    assert sorted(computed) == [Tile("test_diag", 1), Tile("train_train", 0, 2)]
    store.set_bytes("ntk/test_train/c/0/1", store.get_bytes("ntk/test_train/c/0/0"))
    assert store.verify() == {Tile("test_train", 0, 1): "ntk chunk checksum mismatch"}
    build_gram(url, CNN, x, x_test, workers=1, storage_options=s3_options, progress=False, verify=True)
    assert store.verify() == {}
    np.testing.assert_array_equal(read_blocks(store)[("ntk", "test_train")], reference[("ntk", "test_train")])

    with pytest.raises(FingerprintMismatch):
        build_gram(url, CNN, x[:-1], x_test, storage_options=s3_options, progress=False)
