"""GramStore on a local folder: creation, fingerprint, tile bookkeeping, checksums, verify, status."""
import copy
import errno
import json
import os
import pickle
import re
import zlib

import numpy as np
import pytest
import zarr

from builds import snapshot
from raygram.errors import CorruptTile, StoreError
from raygram.store.gram_store import GramStore, describe_difference, fingerprint
from raygram.store.plan import BLOCKS, Tile, TilePlan

ARCHITECTURE = [{"Dense": {"out_dim": 8}}, "Erf", {"Dense": {"out_dim": 1}}]
N, M, T = 10, 4, 4  # train grid 3 (last tile 2 wide), test grid 1 (4 rows)


def make_store(path, n=N, m=M, t=T, kinds=("nngp", "ntk"), dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    x, x_test = rng.normal(size=(n, 3)), (rng.normal(size=(m, 3)) if m else None)
    store = GramStore(path)
    store.create(fingerprint(ARCHITECTURE, kinds, dtype, x, x_test, t), TilePlan(n, m, t))
    return store


def tile_values(store, tile, seed=1):
    """Random values of a tile's shape for every kind (distinct per tile and kind)."""
    region = store.plan.region(tile)
    shape = tuple(s.stop - s.start for s in region)
    rng = np.random.default_rng([seed, BLOCKS.index(tile.block), tile.i, tile.j])
    return {kind: rng.normal(size=shape) for kind in store.kinds}


def chunk_file(root, kind, tile):
    return root.joinpath(kind, tile.block, "c", *map(str, tile.index))


def test_missing_store_is_a_store_error_and_is_not_created(tmp_path):
    path = tmp_path / "absent"
    for read_only in (True, False):
        store = GramStore(path, read_only=read_only)
        assert not store.exists()
        with pytest.raises(StoreError, match="no Gram store at"):
            store.plan
        with pytest.raises(StoreError, match="no Gram store at"):
            store.written_tiles()
    assert not path.exists()


def test_zarr_group_without_raygram_attributes_is_refused(tmp_path):
    zarr.create_group(str(tmp_path / "foreign"))
    with pytest.raises(StoreError, match="not a raygram Gram store"):
        GramStore(tmp_path / "foreign").fingerprint


def test_create_then_reopen_round_trips_fingerprint_and_plan(tmp_path):
    store = make_store(tmp_path / "g")
    wanted = store.fingerprint
    assert store.exists()
    for reopened in (GramStore(tmp_path / "g"), GramStore(tmp_path / "g", read_only=True),
                     pickle.loads(pickle.dumps(store))):
        assert reopened.fingerprint == wanted
        assert reopened.plan == TilePlan(N, M, T)
        assert reopened.kinds == ("nngp", "ntk")
    # The attributes are plain JSON in zarr.json, readable without raygram.
    attrs = json.loads((tmp_path / "g" / "zarr.json").read_text())["attributes"]["raygram"]
    assert attrs["plan"] == {"n_train": N, "n_test": M, "tile_size": T}
    assert attrs["fingerprint"]["x_train"]["shape"] == [N, 3]
    # Arrays have the block shapes, one chunk per tile, and unwritten values are NaN.
    assert store.array("ntk", "train_train").shape == (N, N)
    assert store.array("ntk", "train_train").chunks == (T, T)
    assert store.array("nngp", "test_train").shape == (M, N)
    assert store.array("nngp", "test_diag").shape == (M,)
    assert np.isnan(store.array("ntk", "train_train")[...]).all()
    assert store.written_tiles() == set()


def test_train_only_store_has_one_block(tmp_path):
    store = make_store(tmp_path / "g", m=0, kinds=("ntk",))
    assert store.plan.blocks == ("train_train",) and store.kinds == ("ntk",)
    with pytest.raises(StoreError, match="not 'nngp'"):
        store.array("nngp", "train_train")
    with pytest.raises(StoreError, match="not 'test_train'"):
        store.array("ntk", "test_train")


def test_fingerprint_records_what_determines_the_values(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3))
    base = fingerprint(ARCHITECTURE, ("nngp", "ntk"), "float64", x, None, T)
    assert base == fingerprint(ARCHITECTURE, ["nngp", "ntk"], np.float64, x.copy(), None, T)
    assert base["x_test"] is None and base["tile_size"] == T and base["dtype"] == "float64"
    changed = {
        "x_train": fingerprint(ARCHITECTURE, ("nngp", "ntk"), "float64", x + 1e-12, None, T),
        "tile_size": fingerprint(ARCHITECTURE, ("nngp", "ntk"), "float64", x, None, T + 1),
        "dtype": fingerprint(ARCHITECTURE, ("nngp", "ntk"), "float32", x, None, T),
        "kinds": fingerprint(ARCHITECTURE, ("ntk",), "float64", x, None, T),
        "architecture": fingerprint(ARCHITECTURE[:1], ("nngp", "ntk"), "float64", x, None, T),
        "x_test": fingerprint(ARCHITECTURE, ("nngp", "ntk"), "float64", x, x[:2], T),
    }
    for field, other in changed.items():
        assert other != base
        diff = describe_difference(base, other)
        lines = diff.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"  {field}: store has "), (field, diff)
        assert json.dumps(base[field]) in lines[0] and json.dumps(other[field]) in lines[0]
    assert describe_difference(base, dict(base)) == ""


def test_foreign_store_fingerprint_differs_from_this_build(tmp_path):
    """A store built for other data: its stored fingerprint differs exactly in x_train."""
    store = make_store(tmp_path / "g", seed=0)
    foreign = GramStore(tmp_path / "g", read_only=True).fingerprint
    rng = np.random.default_rng(99)
    wanted = fingerprint(ARCHITECTURE, ("nngp", "ntk"), "float64", rng.normal(size=(N, 3)),
                         rng.normal(size=(M, 3)), T)
    assert foreign == store.fingerprint and foreign != wanted
    fields = [line.split(":")[0].strip() for line in describe_difference(foreign, wanted).splitlines()]
    assert fields == ["x_test", "x_train"]


def test_written_tiles_and_checksums_are_recorded_with_each_tile(tmp_path):
    store = make_store(tmp_path / "g")
    tiles = [Tile("train_train", 0, 2), Tile("train_train", 2, 2), Tile("test_train", 0, 1),
             Tile("test_diag", 0)]
    for tile in tiles:
        values = tile_values(store, tile)
        sums = store.write_tile(tile, values)
        # Independent CRC-32 of the values' float64 bytes in C order, one per kind in store order.
        assert sums == [zlib.crc32(np.ascontiguousarray(values[k], "<f8").tobytes()) for k in ("nngp", "ntk")]
        stored = zarr.open_array(str(tmp_path / "g"), path=f"tiles/{tile.block}", mode="r")[tile.index]
        np.testing.assert_array_equal(stored, sums)
        for kind in store.kinds:
            np.testing.assert_array_equal(store.array(kind, tile.block)[store.plan.region(tile)], values[kind])
    reopened = GramStore(tmp_path / "g", read_only=True)
    assert reopened.written_tiles() == set(tiles)
    # The ragged corner tile (2, 2) covers rows/cols 8:10 only.
    np.testing.assert_array_equal(reopened.array("ntk", "train_train")[8:10, 8:10],
                                  tile_values(store, Tile("train_train", 2, 2))["ntk"])
    # Neighbouring unwritten tiles are untouched (NaN).
    assert np.isnan(reopened.array("ntk", "train_train")[0:4, 4:8]).all()
    assert reopened.verify() == {}
    assert not list((tmp_path / "g").rglob("*.partial"))  # each chunk file renamed into place
    with pytest.raises(Exception, match="read-only"):  # zarr's refusal: the direct path is for writable stores
        reopened.write_tile(tiles[0], tile_values(store, tiles[0]))


def test_write_tile_is_idempotent_and_checks_shapes(tmp_path):
    store = make_store(tmp_path / "g")
    tile = Tile("train_train", 1, 2)
    values = tile_values(store, tile)
    first = store.write_tile(tile, values)
    assert store.write_tile(tile, values) == first
    assert store.written_tiles() == {tile} and store.verify() == {}
    with pytest.raises(ValueError, match=r"expected \(4, 2\)"):
        store.write_tile(tile, {k: np.zeros((4, 4)) for k in store.kinds})


def test_float32_store_checksums_the_stored_values(tmp_path):
    store = make_store(tmp_path / "g", dtype="float32")
    tile = Tile("train_train", 0, 0)
    values = tile_values(store, tile)
    sums = store.write_tile(tile, values)
    assert sums == [zlib.crc32(values[k].astype("<f4").tobytes()) for k in ("nngp", "ntk")]
    assert store.array("ntk", "train_train").dtype == np.float32
    assert store.verify() == {}


def test_verify_finds_a_flipped_byte_and_a_missing_chunk(tmp_path):
    root = tmp_path / "g"
    store = make_store(root)
    for tile in store.plan.tiles():
        store.write_tile(tile, tile_values(store, tile))
    assert store.verify() == {}
    corrupt, missing = Tile("train_train", 0, 1), Tile("test_train", 0, 2)
    path = chunk_file(root, "ntk", corrupt)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    chunk_file(root, "nngp", missing).unlink()
    problems = GramStore(root, read_only=True).verify()
    assert set(problems) == {corrupt, missing}
    assert problems[corrupt] in ("ntk chunk checksum mismatch",) or problems[corrupt].startswith(
        "ntk chunk unreadable"), problems[corrupt]
    assert problems[missing] == "nngp chunk missing"
    # verify(tiles) restricts the check; unwritten tiles are not problems.
    assert GramStore(root).verify([missing, Tile("train_train", 0, 0)]) == {missing: "nngp chunk missing"}
    store.forget_tiles([corrupt])
    assert GramStore(root).verify() == {missing: "nngp chunk missing"}
    # Rewriting the tiles repairs them.
    for tile in (corrupt, missing):
        store.write_tile(tile, tile_values(store, tile))
    assert GramStore(root).verify() == {}


def test_verify_names_every_bad_tile_of_a_row_and_only_those(tmp_path):
    # verify reads a tile row at a time; a row with bad tiles is re-read tile by tile.
    root = tmp_path / "g"
    store = make_store(root, n=16, m=0, t=4)  # train grid 4 x 4
    for tile in store.plan.tiles():
        store.write_tile(tile, tile_values(store, tile))
    flipped, lost = Tile("train_train", 1, 1), Tile("train_train", 1, 3)
    path = chunk_file(root, "nngp", flipped)
    data = bytearray(path.read_bytes())
    data[3] ^= 0x10
    path.write_bytes(bytes(data))
    chunk_file(root, "ntk", lost).unlink()
    problems = GramStore(root, read_only=True).verify()
    assert problems == {flipped: "nngp chunk checksum mismatch", lost: "ntk chunk missing"}
    truncated = Tile("train_train", 2, 3)  # read alone again, the file says how it is short
    truncate(root, truncated)
    assert GramStore(root, read_only=True).verify([truncated]) == {truncated: "ntk chunk unreadable (120 bytes, not 128)"}
    # A subset of the row is checked as asked, whatever its neighbours hold.
    assert GramStore(root).verify([Tile("train_train", 1, 2)]) == {}
    assert GramStore(root).verify([Tile("train_train", 1, 2), lost]) == {lost: "ntk chunk missing"}


def test_values_are_stored_uncompressed_and_compressed_stores_still_read(tmp_path):
    store = make_store(tmp_path / "new")
    codecs = store.array("ntk", "train_train").metadata.codecs
    assert [type(c).__name__ for c in codecs] == ["BytesCodec"]
    # A store whose value arrays were written with zarr's default zstd (earlier raygram
    # versions) reads, verifies and catches damage as a new one does.
    root = tmp_path / "old"
    old = make_store(root)
    group = zarr.open_group(str(root), mode="r+")
    for kind in old.kinds:
        for block in old.plan.blocks:
            array = group[f"{kind}/{block}"]
            group.create_array(f"{kind}/{block}", shape=array.shape, chunks=array.chunks, dtype=array.dtype,
                               fill_value=np.nan, compressors=zarr.codecs.ZstdCodec(),
                               dimension_names=array.metadata.dimension_names, overwrite=True)
    old = GramStore(root)
    expected = {}
    for tile in old.plan.tiles():
        expected[tile] = tile_values(old, tile)
        old.write_tile(tile, expected[tile])
    assert [type(c).__name__ for c in old.array("ntk", "train_train").metadata.codecs] == ["BytesCodec", "ZstdCodec"]
    reopened = GramStore(root, read_only=True)
    assert reopened.verify() == {}
    tile = Tile("train_train", 0, 1)
    region = reopened.plan.region(tile)
    np.testing.assert_array_equal(reopened.reader("ntk")[region], expected[tile]["ntk"])
    chunk_file(root, "ntk", tile).unlink()
    assert GramStore(root, read_only=True).verify() == {tile: "ntk chunk missing"}


def test_status_counts_tiles_and_entries_per_block(tmp_path):
    store = make_store(tmp_path / "g")
    status = store.status()
    assert status["complete"] is False and status["tiles_done"] == 0
    # train_train: 3x3 grid, upper tiles only -> 6; test_train 1x3 -> 3; test_diag 1.
    assert status["tiles_total"] == 10
    assert status["blocks"]["train_train"] == {"tiles_done": 0, "tiles_total": 6, "entries_done": 0,
                                               "entries_total": 3 * 16 + 2 * 8 + 4}
    assert status["blocks"]["test_train"]["entries_total"] == M * N
    assert status["blocks"]["test_diag"]["entries_total"] == M
    for tile in (Tile("train_train", 0, 2), Tile("train_train", 2, 2), Tile("test_diag", 0)):
        store.write_tile(tile, tile_values(store, tile))
    status = GramStore(tmp_path / "g", read_only=True).status()
    assert status["tiles_done"] == 3 and status["complete"] is False
    assert status["blocks"]["train_train"]["tiles_done"] == 2
    assert status["blocks"]["train_train"]["entries_done"] == 4 * 2 + 2 * 2
    assert status["blocks"]["test_diag"] == {"tiles_done": 1, "tiles_total": 1, "entries_done": M,
                                             "entries_total": M}
    assert status["fingerprint"] == store.fingerprint and status["plan"] == store.plan.to_dict()
    for tile in store.plan.tiles():
        store.write_tile(tile, tile_values(store, tile))
    status = store.status()
    assert status["complete"] is True and status["tiles_done"] == status["tiles_total"] == 10
    assert sum(b["entries_done"] for b in status["blocks"].values()) == store.plan.total_entries()


def test_forget_tiles_marks_them_unwritten(tmp_path):
    store = make_store(tmp_path / "g")
    for tile in store.plan.tiles():
        store.write_tile(tile, tile_values(store, tile))
    store.gram("ntk", "train_train")  # complete: no error
    forgotten = [Tile("train_train", 1, 1), Tile("test_diag", 0)]
    store.forget_tiles(forgotten)
    assert store.written_tiles() == set(store.plan.tiles()) - set(forgotten)
    assert store.status()["tiles_done"] == 8
    with pytest.raises(StoreError, match="incomplete: 1 tiles not written"):
        store.gram("ntk", "train_train")
    with pytest.raises(StoreError, match="incomplete"):
        store.gram("nngp", "test_diag")
    store.gram("ntk", "train_train", require_complete=False)  # allowed when asked for
    store.gram("ntk", "test_train")  # other blocks are still complete


# -- verified reads, damage, and stores that are not stores ------------------------------------------

def full_store(path, **kwargs):
    """A store with every tile written (random values per tile and kind)."""
    store = make_store(path, **kwargs)
    for tile in store.plan.tiles():
        store.write_tile(tile, tile_values(store, tile))
    return store


def delete_values(root, tile, kind="ntk"):
    chunk_file(root, kind, tile).unlink()


def flip_byte(root, tile, kind="ntk"):
    path = chunk_file(root, kind, tile)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(root, tile, kind="ntk"):
    path = chunk_file(root, kind, tile)
    path.write_bytes(path.read_bytes()[:-8])


def swap_values(root, tile, kind="ntk"):
    """A valid chunk with other values: tile (0, 0)'s bytes in `tile` (decodes, fails only the checksum)."""
    chunk_file(root, kind, tile).write_bytes(chunk_file(root, kind, Tile(tile.block, 0, 0)).read_bytes())


def delete_checksum(root, tile, kind=None):
    root.joinpath("tiles", tile.block, "c", *map(str, tile.index), "0").unlink()


DAMAGE = {"deleted data chunk": (delete_values, r"ntk chunk missing"),
          "flipped byte": (flip_byte, r"ntk chunk (checksum mismatch|unreadable)"),
          "truncated chunk": (truncate, r"ntk chunk unreadable"),
          "other values": (swap_values, r"ntk chunk checksum mismatch"),
          "deleted checksum chunk": (delete_checksum, r"checksum chunk missing")}
READS = {"train slice": lambda s: s.gram("ntk")[2:7, 0:10],
         "train row": lambda s: s.gram("ntk")[9],
         "train dense": lambda s: s.gram("ntk").dense(),
         "train to_dask": lambda s: s.to_dask("ntk").compute(),
         "train matmat": lambda s: s.gram("ntk").matmat(np.ones((N, 2))).compute(),
         "test slice": lambda s: s.gram("ntk", "test_train")[1:3, 5:9],
         "test to_dask": lambda s: s.to_dask("ntk", "test_train").compute()}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("read", READS)
def test_every_read_path_refuses_a_damaged_tile_naming_it(tmp_path, damage, read):
    """Tile (1, 2) of train_train (rows 4:8, columns 8:10) and tile (0, 2) of test_train (columns 8:10):
    every read path touches both (row 9 reads tile (1, 2) as the mirror of (2, 1))."""
    root = tmp_path / "g"
    full_store(root)
    bad = Tile("test_train", 0, 2) if read.startswith("test") else Tile("train_train", 1, 2)
    damage_fn, problem = DAMAGE[damage]
    damage_fn(root, bad)
    with pytest.raises(CorruptTile, match=rf"tile {re.escape(str(bad))} of the store {re.escape(str(root))} is "
                       rf"corrupt \({problem}.*\); run `raygram build --verify`") as caught:
        READS[read](GramStore(root, read_only=True))
    assert isinstance(caught.value, StoreError) and caught.value.exit_code == 1
    assert len(str(caught.value).splitlines()) == 1


def test_damage_after_the_view_was_made_is_caught_at_the_read(tmp_path):
    root = tmp_path / "g"
    store = full_store(root)
    view, test_view = store.gram("ntk"), store.gram("nngp", "test_diag")
    good = view[0:4, 0:8]  # before the damage
    delete_values(root, Tile("train_train", 0, 1))
    flip_byte(root, Tile("test_diag", 0), kind="nngp")
    np.testing.assert_array_equal(view[0:4, 0:4], good[:, :4])  # tile (0, 0) is intact
    corner = store.array("ntk", "train_train")[8:10, 8:10]  # a diagonal tile: its upper triangle, mirrored
    np.testing.assert_array_equal(view[8:10, 8:10], np.triu(corner) + np.triu(corner, 1).T)
    with pytest.raises(CorruptTile, match=r"train_train\[0,1\].*ntk chunk missing"):
        view[3, 5]  # one entry of the tile: the whole tile is checked
    with pytest.raises(CorruptTile, match=r"train_train\[0,1\]"):
        view[5, 3]  # its mirror
    with pytest.raises(CorruptTile, match=r"test_diag\[0\].*nngp chunk"):
        test_view[...]


def test_reads_agree_with_the_raw_arrays_and_touch_only_what_they_need(tmp_path):
    """Verified reads equal zarr's own; a damaged tile fails only reads that touch it."""
    root = tmp_path / "g"
    store = full_store(root)
    raw = {block: store.array("ntk", block)[...] for block in store.plan.blocks}
    test_view, diag_view = store.gram("ntk", "test_train"), store.gram("ntk", "test_diag")
    for key in (np.s_[...], np.s_[1:3, 5:9], np.s_[2], np.s_[:, 9], np.s_[3, 7], np.s_[0:0, 2:5], np.s_[-1, -3:]):
        np.testing.assert_array_equal(test_view[key], raw["test_train"][key])
    np.testing.assert_array_equal(diag_view[1:3], raw["test_diag"][1:3])
    assert test_view.shape == (M, N) and test_view.chunks == (T, T) and diag_view.ndim == 1
    delete_values(root, Tile("test_train", 0, 2))
    np.testing.assert_array_equal(test_view[:, 0:8], raw["test_train"][:, 0:8])
    with pytest.raises(CorruptTile):
        test_view[:, 7:9]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_local_reads_take_the_chunk_files_and_equal_zarrs_reads(tmp_path, dtype):
    """A local store's verified reads come straight from its chunk files (`VerifiedBlock.files`);
    they equal the same reads through zarr, NaN (zarr's fill value) where a tile is unwritten."""
    root = tmp_path / "g"
    store = make_store(root, dtype=dtype)
    unwritten = {Tile("train_train", 0, 1), Tile("train_train", 2, 2), Tile("test_train", 0, 0)}
    for tile in set(store.plan.tiles()) - unwritten:
        store.write_tile(tile, tile_values(store, tile))
    for block in store.plan.blocks:
        direct = store.reader("nngp", block, require_complete=False)
        assert direct.files == root / "nngp" / block / "c"
        through_zarr = copy.copy(direct)
        through_zarr.files = None
        keys = [np.s_[...], np.s_[1:3], np.s_[-1]] + ([np.s_[3:9, 2:10], np.s_[:, 9]] if direct.ndim == 2 else [])
        for key in keys:
            np.testing.assert_array_equal(direct[key], through_zarr[key])
            assert direct[key].dtype == np.dtype(dtype)
    upper = store.reader("nngp", "train_train", require_complete=False)[...]
    assert np.isnan(upper[0:4, 4:8]).all() and np.isnan(upper[8:, 8:]).all() and not np.isnan(upper[0:4, 0:4]).any()


def test_whole_page_chunks_are_written_past_the_page_cache_and_read_back(tmp_path, monkeypatch):
    """Value chunks of at least 1 MiB and a multiple of 4096 bytes (tile 512, float64: 2 MiB) are
    opened with O_DIRECT (where the file system refuses it, written the ordinary way); checksum
    chunks (8 bytes) the ordinary way. zarr reads every chunk back as written, edge padding included."""
    opened = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        opened.append((path, bool(flags & getattr(os, "O_DIRECT", 0))))
        return real_open(path, flags, *args, **kwargs)

    store = make_store(tmp_path / "g", n=600, m=0, t=512)
    monkeypatch.setattr(os, "open", recording_open)
    written = {tile: tile_values(store, tile) for tile in store.plan.tiles()}
    for tile, values in written.items():
        store.write_tile(tile, values)
    monkeypatch.undo()
    if hasattr(os, "O_DIRECT"):  # per tile: nngp and ntk values direct; the checksum chunk by open()
        assert len(opened) == 2 * len(written) and all(direct for _, direct in opened), opened
    for tile, values in written.items():
        for kind in store.kinds:
            np.testing.assert_array_equal(store.array(kind, tile.block)[store.plan.region(tile)], values[kind])
    assert GramStore(tmp_path / "g", read_only=True).verify() == {}
    corner = zarr.open_array(str(tmp_path / "g"), path="ntk/train_train", mode="r")[512:, 512:]
    np.testing.assert_array_equal(corner, written[Tile("train_train", 1, 1)]["ntk"])


def test_a_file_system_refusing_direct_io_gets_ordinary_writes(tmp_path, monkeypatch):
    """Where opening with O_DIRECT fails (tmpfs: EINVAL), the same chunk is written the ordinary way."""
    real_open, refused = os.open, []

    def refusing_open(path, flags, *args, **kwargs):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    store = make_store(tmp_path / "g", n=600, m=0, t=512)
    tile = Tile("train_train", 0, 1)
    values = tile_values(store, tile)
    monkeypatch.setattr(os, "open", refusing_open)
    store.write_tile(tile, values)
    monkeypatch.undo()
    assert len(refused) == (2 if hasattr(os, "O_DIRECT") else 0)
    for kind in store.kinds:
        np.testing.assert_array_equal(store.array(kind, "train_train")[store.plan.region(tile)], values[kind])
    assert store.verify([tile]) == {} and not list((tmp_path / "g").rglob("*.partial"))


def test_non_finite_stored_values_are_refused_by_reads_and_verify(tmp_path):
    """A tile stored with a NaN (its checksum matches: no build writes that) is bad."""
    store = full_store(tmp_path / "g")
    tile = Tile("train_train", 0, 2)
    values = tile_values(store, tile)
    values["nngp"][1, 1] = np.nan
    store.write_tile(tile, values)
    assert store.verify() == {tile: "nngp values not finite"}
    with pytest.raises(CorruptTile, match=r"train_train\[0,2\].*nngp values not finite"):
        store.gram("nngp").dense()
    store.gram("ntk").dense()  # the other kind of the tile is fine


def test_status_reports_the_damage_it_sees_in_listings(tmp_path):
    root = tmp_path / "g"
    store = full_store(root)
    status = store.status()
    assert status["complete"] is True and status["corrupt_tiles"] == {} and status["values_checked"] is False
    delete_values(root, Tile("train_train", 1, 1), kind="nngp")
    delete_checksum(root, Tile("test_train", 0, 1))
    flip_byte(root, Tile("train_train", 0, 0))  # needs the values read: status does not see it
    status = GramStore(root, read_only=True).status()
    assert status["complete"] is False and status["values_checked"] is False
    assert status["tiles_done"] == status["tiles_total"] - 1
    assert set(status["corrupt_tiles"]) == {"train_train[1,1]", "test_train[0,1]"}
    assert status["corrupt_tiles"]["train_train[1,1]"] == "nngp chunk missing"
    assert status["corrupt_tiles"]["test_train[0,1]"].startswith("checksum chunk missing")
    json.dumps(status)  # what `raygram status --json` prints


def test_verify_counts_a_missing_checksum_chunk_as_bad(tmp_path):
    root = tmp_path / "g"
    store = full_store(root)
    delete_checksum(root, Tile("train_train", 0, 1))
    problems = GramStore(root).verify()
    assert list(problems) == [Tile("train_train", 0, 1)] and problems[Tile("train_train", 0, 1)].startswith(
        "checksum chunk missing")
    # A forgotten tile (checksum and values deleted) is unwritten, not bad; rewriting it repairs the store.
    store.forget_tiles([Tile("train_train", 0, 1)])
    assert store.verify() == {} and Tile("train_train", 0, 1) not in store.written_tiles()
    assert not chunk_file(root, "ntk", Tile("train_train", 0, 1)).exists()
    store.write_tile(Tile("train_train", 0, 1), tile_values(store, Tile("train_train", 0, 1)))
    assert store.verify() == {} and store.status()["complete"]


GROUP = '{"zarr_format": 3, "node_type": "group", "attributes": {"raygram": %s}}'


@pytest.mark.parametrize("content", ["{not json", "", "[]", '{"zarr_format": 3, "node_type": "array"}',
                                     GROUP % '{"plan": {}}', GROUP % "7",
                                     GROUP % '{"plan": {"n_train": 10, "n_test": 4, "tile_size": 4}}'])
def test_damaged_group_metadata_is_a_one_line_store_error(tmp_path, content, capsys):
    from raygram.cli.main import main

    root = tmp_path / "g"
    full_store(root)
    (root / "zarr.json").write_text(content)
    for read_only in (True, False):
        with pytest.raises(StoreError, match=re.escape(str(root))) as caught:
            GramStore(root, read_only=read_only).plan
        assert len(str(caught.value).splitlines()) == 1 and not isinstance(caught.value, CorruptTile)
    before = snapshot(root)
    assert main(["status", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raygram: error: ") and len(err.strip().splitlines()) == 1, err
    assert snapshot(root) == before


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not readable zarr array metadata"),
    ('{"zarr_format": 3, "node_type": "array"}', "is not readable zarr array metadata"),
    (None, "is not readable zarr array metadata"),
    ("shape", r"describes shape, chunks, dtype \(\(10, 12\)"),
])
def test_damaged_array_metadata_is_a_one_line_store_error(tmp_path, content, message):
    root = tmp_path / "g"
    full_store(root)
    path = root / "ntk" / "train_train" / "zarr.json"
    if content is None:
        path.unlink()
    elif content == "shape":
        meta = json.loads(path.read_text())
        path.write_text(json.dumps(dict(meta, shape=[10, 12])))
    else:
        path.write_text(content)
    store = GramStore(root, read_only=True)
    assert store.plan == TilePlan(N, M, T)  # the group is fine
    with pytest.raises(StoreError, match=re.escape(str(path)) + ".*" + message) as caught:
        store.gram("ntk").dense()
    assert len(str(caught.value).splitlines()) == 1
    store.gram("nngp").dense()  # the other arrays read as before


def test_a_location_holding_something_else_is_not_a_store(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for path, message in ((folder, r"holds 'notes.txt' but no zarr.json"), (folder / "notes.txt", "is a file")):
        store = GramStore(path)
        with pytest.raises(StoreError, match=message):
            store.exists()
        with pytest.raises(StoreError, match=message):
            store.plan
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    # A lease left by a build that stopped before creating the store is not foreign content.
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "raygram.lock").write_text("{}")
    assert GramStore(tmp_path / "new").exists() is False


def test_unverified_reads_switch_reads_plain_zarr(tmp_path, monkeypatch):
    """RAYGRAM_UNVERIFIED_READS=1 (for measuring the cost only) gives zarr's values, NaN for a lost chunk."""
    root = tmp_path / "g"
    store = full_store(root)
    delete_values(root, Tile("train_train", 0, 1))
    monkeypatch.setenv("RAYGRAM_UNVERIFIED_READS", "1")
    view = GramStore(root, read_only=True).gram("ntk")
    assert view.upper.sums is None
    assert np.isnan(view[0:4, 4:8]).all()
    diagonal = store.array("ntk", "train_train")[0:4, 0:4]
    np.testing.assert_array_equal(view[0:4, 0:4], np.triu(diagonal) + np.triu(diagonal, 1).T)


def test_an_undecodable_checksum_chunk_makes_its_tile_bad(tmp_path):
    root = tmp_path / "g"
    store = full_store(root)
    tile = Tile("train_train", 1, 2)
    root.joinpath("tiles", "train_train", "c", "1", "2", "0").write_bytes(b"\x01\x02\x03")  # not 2 uint32
    reader = GramStore(root, read_only=True)
    with pytest.raises(CorruptTile, match=r"train_train\[1,2\].*checksum chunk unreadable"):
        reader.gram("ntk").dense()
    reader.gram("ntk")[0:4, 0:8]  # tiles (0, 0) and (0, 1): fine
    problems = reader.verify()
    assert list(problems) == [tile] and problems[tile].startswith("checksum chunk unreadable")
    store.forget_tiles([tile])  # what `build --verify` does before recomputing it
    store.write_tile(tile, tile_values(store, tile))
    assert GramStore(root).verify() == {}


# -- relative paths, and the status / verify commands ----------------------------------------------

def test_a_relative_path_is_made_absolute_when_the_store_is_made(tmp_path, monkeypatch):
    """A GramStore pickled to a process in another folder (a Ray actor) means the same folder."""
    (tmp_path / "driver").mkdir()
    (tmp_path / "actor").mkdir()
    monkeypatch.chdir(tmp_path / "driver")
    for given in ("g", "file://g", "./g"):
        store = GramStore(given)
        assert store.url == str(tmp_path / "driver" / "g"), given
        payload = pickle.dumps(store)
        monkeypatch.chdir(tmp_path / "actor")
        assert pickle.loads(payload).url == str(tmp_path / "driver" / "g")
        monkeypatch.chdir(tmp_path / "driver")
    make_store("g")
    monkeypatch.chdir(tmp_path / "actor")
    reopened = pickle.loads(payload)
    reopened.write_tile(Tile("test_diag", 0), tile_values(reopened, Tile("test_diag", 0)))
    assert GramStore(tmp_path / "driver" / "g").written_tiles() == {Tile("test_diag", 0)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actor", "driver"]
    assert list((tmp_path / "actor").iterdir()) == []
    assert GramStore("s3://bucket/g", read_only=True).url == "s3://bucket/g"  # URLs are kept as they are


def run_cli(*argv, capsys):
    from raygram.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_and_verify_commands_count_every_tile_once(tmp_path, capsys):
    """N=10, M=4, t=4: 10 tiles (6 train_train, 3 test_train, 1 test_diag); four kinds of damage."""
    root = tmp_path / "g"
    store = full_store(root)
    code, out, err = run_cli("verify", str(root), capsys=capsys)
    assert (code, err) == (0, "") and out == f"{root}: 10 tiles: 10 good, 0 bad, 0 not written\n"
    code, out, _ = run_cli("status", str(root), capsys=capsys)
    assert code == 0 and out.startswith(f"{root}: 10/10 tiles (complete); N=10, M=4, tile size 4")
    assert out.splitlines()[-1] == "values not checked (run `raygram verify` to read every tile against its checksum)"

    delete_values(root, Tile("train_train", 1, 1))   # bad: listed (status sees it)
    flip_byte(root, Tile("train_train", 0, 0))       # bad: only a read sees it
    delete_checksum(root, Tile("test_train", 0, 1))  # bad: values without a checksum (listed)
    store.forget_tiles([Tile("test_diag", 0)])       # not written: not bad
    code, out, err = run_cli("verify", str(root), capsys=capsys)
    assert code == 1 and err == ""
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "BAD test_train[0,1]", "BAD train_train[0,0]", "BAD train_train[1,1]"]
    assert lines[-1] == (f"{root}: 10 tiles: 6 good, 3 bad, 1 not written; "
                         "rerun the build with --verify to recompute the bad ones")
    code, out, err = run_cli("status", str(root), capsys=capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"{root}: 8/10 tiles (incomplete, 2 corrupt);")
    assert lines[1].split() == ["train_train", "6/6", "tiles", "100.00%", "of", "entries"]
    assert lines[2].split()[:2] == ["test_train", "2/3"] and lines[3].split()[:2] == ["test_diag", "0/1"]
    assert lines[4] == "CORRUPT train_train[1,1]: ntk chunk missing"
    assert lines[5].startswith("CORRUPT test_train[0,1]: checksum chunk missing")
    assert "train_train[0,0]" not in out  # a changed value needs a read: status does not claim to see it
    assert lines[-1].startswith("values not checked (run `raygram verify`")


def test_verify_exits_1_for_a_lost_checksum_chunk_and_0_for_an_unfinished_build(tmp_path, capsys):
    root = tmp_path / "g"
    store = full_store(root)
    delete_checksum(root, Tile("train_train", 0, 1))
    code, out, _ = run_cli("verify", str(root), capsys=capsys)
    assert code == 1 and out.splitlines()[0].startswith("BAD train_train[0,1]: checksum chunk missing")
    assert out.splitlines()[-1].startswith(f"{root}: 10 tiles: 9 good, 1 bad, 0 not written;")
    store.forget_tiles([Tile("train_train", 0, 1), Tile("test_train", 0, 2)])  # an unfinished build: nothing bad
    code, out, _ = run_cli("verify", str(root), capsys=capsys)
    assert code == 0 and out == f"{root}: 10 tiles: 8 good, 0 bad, 2 not written\n"
