"""The Gram store: one zarr v3 group per build, tiles written straight from the workers.

Layout (chunks = tiles, no sharding, `write_empty_chunks` on):

    <store>/zarr.json                    attrs["raygram"]: fingerprint + tile plan (driver only)
    <store>/<kind>/<block>               kernel values, kind in {nngp, ntk}, fill NaN;
                                         train_train holds only tiles (i, j), i <= j
    <store>/tiles/<block>                uint32 CRC-32 of each tile, one per kind: (gi, gj, K)
                                         or (gi, K); one chunk per tile, written last
    <store>/raygram.lock                 the build lease (see `raygram.lock`)

A tile is written iff its chunk of ``tiles/<block>`` exists: a worker writes the kernel
chunks first and the checksum chunk last, so a tile cut off mid-write counts as missing.
Values of unwritten tiles read as NaN.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from importlib import metadata
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from .architecture import spec_json
from .tiling import Tile, TilePlan

KINDS = ("nngp", "ntk")
DTYPES = ("float32", "float64")
ATTRS_KEY = "raygram"
FORMAT = 1
_WRITE_CONFIG = {"write_empty_chunks": True}


class StoreError(RuntimeError):
    """A store that cannot be used for the requested build or read."""


class FingerprintMismatch(StoreError):
    """The store holds tiles of another kernel/dataset configuration."""


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("raygram", "jax", "neural-tangents")}


def data_fingerprint(x: np.ndarray | None) -> dict[str, Any] | None:
    """Shape, dtype and SHA-256 of an input array (None for no array)."""
    if x is None:
        return None
    x = np.ascontiguousarray(x)
    return {"shape": list(x.shape), "dtype": x.dtype.str,
            "sha256": hashlib.sha256(memoryview(x).cast("B")).hexdigest()}


def fingerprint(architecture, kinds, dtype, x_train, x_test, tile_size) -> dict[str, Any]:
    """Everything that determines the stored values; two builds may share a store iff equal."""
    return {"format": FORMAT,
            "architecture": json.loads(spec_json(architecture)),
            "kinds": list(kinds),
            "dtype": str(np.dtype(dtype)),
            "x_train": data_fingerprint(x_train),
            "x_test": data_fingerprint(x_test),
            "tile_size": int(tile_size),
            "versions": _versions()}


def describe_difference(stored: dict, wanted: dict) -> str:
    """Human-readable list of the fingerprint fields that differ."""
    fields = sorted(set(stored) | set(wanted))
    lines = [f"  {f}: store has {json.dumps(stored.get(f))}, this build has {json.dumps(wanted.get(f))}"
             for f in fields if stored.get(f) != wanted.get(f)]
    return "\n".join(lines)


def open_backend(url: str, storage_options: dict | None = None, read_only: bool = False):
    """A zarr Store for a local folder (default) or an fsspec URL such as s3://bucket/prefix."""
    url = str(url)
    if "://" in url and not url.startswith("file://"):
        return FsspecStore.from_url(url, storage_options=storage_options or {}, read_only=read_only)
    if storage_options:
        raise ValueError(f"storage_options are only for object-store URLs, not the local path {url!r}")
    return LocalStore(url.removeprefix("file://"), read_only=read_only)


def checksum(values: np.ndarray) -> int:
    """CRC-32 of a tile's values as stored (C order, store dtype)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(values)).cast("B"))


class GramStore:
    """A build's zarr group: creation, tile bookkeeping, integrity checks and reading.

    `url` is a local folder or an fsspec URL (s3://bucket/prefix, with credentials and
    `endpoint_url` in `storage_options`). Picklable: Ray workers and dask tasks reopen it.
    """

    def __init__(self, url: str, storage_options: dict | None = None, read_only: bool = False):
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.read_only = read_only
        self.backend = open_backend(self.url, self.storage_options, read_only)
        self._group = None
        self._arrays = {}

    def __reduce__(self):
        return GramStore, (self.url, self.storage_options, self.read_only)

    def __repr__(self):
        return f"GramStore({self.url!r})"

    # -- raw keys -----------------------------------------------------------------------------
    def _absent_folder(self) -> bool:
        """A local store whose folder does not exist (reading it must not create it)."""
        return isinstance(self.backend, LocalStore) and not self.backend.root.exists()

    def get_bytes(self, key: str) -> bytes | None:
        if self._absent_folder():
            return None
        buffer = sync(self.backend.get(key, prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def set_bytes(self, key: str, value: bytes, exclusive: bool = False) -> None:
        buffer = default_buffer_prototype().buffer.from_bytes(value)
        sync((self.backend.set_if_not_exists if exclusive else self.backend.set)(key, buffer))

    def delete_key(self, key: str) -> None:
        sync(self.backend.delete(key))

    def list_keys(self, prefix: str) -> list[str]:
        if self._absent_folder():
            return []

        async def collect():
            return [k async for k in self.backend.list_prefix(prefix)]
        return sync(collect())

    # -- the group ----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.get_bytes("zarr.json") is not None

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            if not self.exists():
                raise StoreError(f"no Gram store at {self.url} (nothing has been built there)")
            self._group = zarr.open_group(self.backend, mode="r" if self.read_only else "r+")
        return self._group

    @property
    def attrs(self) -> dict[str, Any]:
        attrs = self.group.attrs.get(ATTRS_KEY)
        if attrs is None:
            raise StoreError(f"{self.url} is a zarr group but not a raygram Gram store "
                             f"(no '{ATTRS_KEY}' attributes)")
        return attrs

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.attrs["fingerprint"]

    @property
    def plan(self) -> TilePlan:
        return TilePlan(**self.attrs["plan"])

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.fingerprint["kinds"])

    def create(self, fingerprint: dict, plan: TilePlan) -> None:
        """Create the group and its empty arrays (driver only; the store must not exist yet)."""
        dtype = np.dtype(fingerprint["dtype"])
        t = plan.tile_size
        kinds = fingerprint["kinds"]
        group = zarr.create_group(self.backend, attributes={
            ATTRS_KEY: {"fingerprint": fingerprint, "plan": plan.to_dict()}})
        for block in plan.blocks:
            shape = plan.block_shape(block)
            chunks = (t,) * len(shape)
            for kind in kinds:
                group.create_array(f"{kind}/{block}", shape=shape, chunks=chunks, dtype=dtype,
                                   fill_value=np.nan, config=_WRITE_CONFIG,
                                   dimension_names=_dimension_names(block))
            grid = plan.block_grid(block)
            group.create_array(f"tiles/{block}", shape=grid + (len(kinds),),
                               chunks=(1,) * len(grid) + (len(kinds),), dtype="uint32", fill_value=0,
                               config=_WRITE_CONFIG, compressors=None)
        self._group = group

    def array(self, kind: str, block: str) -> zarr.Array:
        if kind not in self.kinds:
            raise StoreError(f"the store at {self.url} holds kinds {list(self.kinds)}, not {kind!r}")
        if block not in self.plan.blocks:
            raise StoreError(f"the store at {self.url} has blocks {list(self.plan.blocks)}, not {block!r}")
        return self._open_array(f"{kind}/{block}")

    def _checksums(self, block: str) -> zarr.Array:
        return self._open_array(f"tiles/{block}")

    def _open_array(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            array = zarr.open_array(self.backend, path=path, mode="r" if self.read_only else "r+")
            # `open_array` ignores `config` for an existing array; `with_config` applies it.
            self._arrays[path] = array.with_config(_WRITE_CONFIG)
        return self._arrays[path]

    # -- tiles --------------------------------------------------------------------------------
    def write_tile(self, tile: Tile, values: dict[str, np.ndarray]) -> list[int]:
        """Store a tile's values (kind -> unpadded array), then its checksums; idempotent."""
        plan = self.plan
        region = plan.region(tile)
        sums = []
        for kind in self.kinds:
            tile_values = np.asarray(values[kind], dtype=self.fingerprint["dtype"])
            expected = tuple(s.stop - s.start for s in region)
            if tile_values.shape != expected:
                raise ValueError(f"tile {tile}: {kind} values have shape {tile_values.shape}, "
                                 f"expected {expected}")
            self.array(kind, tile.block)[region] = tile_values
            sums.append(checksum(tile_values))
        self._checksums(tile.block)[tile.index] = np.asarray(sums, dtype="uint32")
        return sums

    def written_tiles(self) -> set[Tile]:
        """Tiles whose checksum chunk exists (one listing per block)."""
        plan = self.plan
        done = set()
        for block in plan.blocks:
            prefix = f"tiles/{block}/c/"
            for key in self.list_keys(prefix):
                parts = key[len(prefix):].split("/")
                if not all(p.isdigit() for p in parts):
                    continue  # e.g. a temporary file of a write that was cut off
                index = [int(p) for p in parts]
                done.add(Tile(block, index[0]) if block == "test_diag" else Tile(block, index[0], index[1]))
        return done

    def forget_tiles(self, tiles: Iterable[Tile]) -> None:
        """Mark tiles unwritten (delete their checksum chunks) so the next build recomputes them."""
        for tile in tiles:
            self.delete_key(f"tiles/{tile.block}/c/" + "/".join(map(str, tile.index)) + "/0")

    def verify(self, tiles: Iterable[Tile] | None = None) -> dict[Tile, str]:
        """Re-read written tiles and compare with their checksums: {tile: problem} for bad ones.

        Unwritten tiles are not problems here (see `status`); a written tile is bad when a
        chunk is missing, cannot be decoded, or its values changed since they were written.
        """
        plan = self.plan
        written = self.written_tiles()
        problems = {}
        for tile in sorted(written if tiles is None else set(tiles) & written):
            stored = self._checksums(tile.block)[tile.index]
            for kind, expected in zip(self.kinds, stored):
                try:
                    values = self.array(kind, tile.block)[plan.region(tile)]
                except Exception as e:  # a chunk that no longer decodes
                    problems[tile] = f"{kind} chunk unreadable ({type(e).__name__}: {e})"
                    break
                if checksum(values) != int(expected):
                    missing = np.isnan(values).all()
                    problems[tile] = f"{kind} chunk " + ("missing" if missing else "checksum mismatch")
                    break
        return problems

    def status(self) -> dict[str, Any]:
        """How complete the store is: tiles and entries written per block."""
        plan = self.plan
        written = self.written_tiles()
        blocks = {}
        for block in plan.blocks:
            tiles = list(plan.tiles(block))
            done = [t for t in tiles if t in written]
            blocks[block] = {"tiles_done": len(done), "tiles_total": len(tiles),
                             "entries_done": sum(plan.entries(t) for t in done),
                             "entries_total": sum(plan.entries(t) for t in tiles)}
        tiles_done = sum(b["tiles_done"] for b in blocks.values())
        tiles_total = sum(b["tiles_total"] for b in blocks.values())
        return {"store": self.url, "complete": tiles_done == tiles_total, "tiles_done": tiles_done,
                "tiles_total": tiles_total, "blocks": blocks, "plan": plan.to_dict(),
                "fingerprint": self.fingerprint}

    # -- reading ------------------------------------------------------------------------------
    def gram(self, kind: str = "ntk", block: str = "train_train", require_complete: bool = True):
        """Lazy view of a block: the full symmetric matrix for train_train, else the zarr array.

        Both slice like numpy arrays and go into `dask.array.from_array` (see `to_dask`).
        """
        from .symmetric import SymmetricGram

        array = self.array(kind, block)
        if require_complete:
            done = self.written_tiles()
            missing = [t for t in self.plan.tiles(block) if t not in done]
            if missing:
                raise StoreError(f"{block} of {self.url} is incomplete: {len(missing)} tiles not written "
                                 f"(first {missing[0]}); run the build again to finish it")
        return SymmetricGram(array) if block == "train_train" else array

    def to_dask(self, kind: str = "ntk", block: str = "train_train", require_complete: bool = True):
        """A dask array of a block with one chunk per tile.

        The view is inlined into each read task: Ray's dask scheduler rebuilds dataclass
        arguments (a zarr array is one) from their fields, which fails for zarr's metadata.
        """
        import dask.array as da

        view = self.gram(kind, block, require_complete)
        name = "raygram-" + hashlib.sha256(
            json.dumps([self.url, self.fingerprint, kind, block], sort_keys=True).encode()).hexdigest()[:24]
        return da.from_array(view, chunks=view.chunks, name=name, asarray=True, inline_array=True)


def _dimension_names(block: str) -> tuple[str, ...]:
    return {"train_train": ("train", "train"), "test_train": ("test", "train"),
            "test_diag": ("test",)}[block]
