"""Relative store paths mean the driver's working directory, wherever the Ray workers run.

Workers started by a Ray head run in the head's working directory, not the driver's: a
relative store path handed to them as it is would build (and overwrite) a store there.
"""
import os
import subprocess
import sys
import textwrap

import yaml

from conftest import ray_head
from raygram.build.scheduler import open_store
from raygram.store.gram_store import GramStore

DRIVER = textwrap.dedent("""
    import sys
    import numpy as np
    import ray
    from raygram import TilingOptions, build_gram
    from raygram.cli.main import main

    ray.init(address=sys.argv[1], log_to_driver=False)
    x = np.random.default_rng(0).normal(size=(5, 4))
    np.save("x.npy", x)
    dense = [{"Dense": {"out_dim": 1}}]
    build_gram("gram.zarr", dense, x, progress=False, tiling=TilingOptions(tile_size=2, workers=1))
    sys.exit(main(["build", "build.yaml", "-q"]))
""")


def test_relative_store_lands_in_the_drivers_folder_not_the_ray_heads(tmp_path):
    head_dir, driver_dir = tmp_path / "head", tmp_path / "driver"
    head_dir.mkdir()
    driver_dir.mkdir()
    (driver_dir / "build.yaml").write_text(yaml.safe_dump({
        "name": "relative", "data": {"source": "npy", "path": "x.npy", "standardize": False},
        "kernels": {"dense": {"architecture": [{"Dense": {"out_dim": 1}}]}}, "store": "stores",
        "tiling": {"tile_size": 2, "workers": 1}}))
    env = dict(os.environ)
    with ray_head(head_dir) as address:
        driver = subprocess.run([sys.executable, "-c", DRIVER, address], cwd=driver_dir, env=env,
                                capture_output=True, text=True, timeout=600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert os.listdir(head_dir) == []  # nothing in the head's folder
    for store in (driver_dir / "gram.zarr", driver_dir / "stores" / "dense"):
        status = GramStore(store).status()
        assert status["complete"] and status["tiles_done"] == 6, status  # upper tiles of a 3x3 grid


def test_open_store_makes_local_paths_absolute_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("a/b/gram.zarr").url == str(tmp_path / "a/b/gram.zarr")
    assert open_store(GramStore("gram.zarr")).url == str(tmp_path / "gram.zarr")
    assert open_store("file://x.zarr", read_only=True).url == str(tmp_path / "x.zarr")
    assert os.listdir(tmp_path) == []
