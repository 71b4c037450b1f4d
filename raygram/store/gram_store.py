"""The Gram store: one zarr v3 group per build, tiles written straight from the workers.

Layout (chunks = tiles, no sharding, `write_empty_chunks` on, no compressor):

    <store>/zarr.json                    attrs["raygram"]: fingerprint + tile plan (driver only)
    <store>/<kind>/<block>               kernel values, kind in {nngp, ntk}, fill NaN;
                                         train_train holds only tiles (i, j), i <= j
    <store>/tiles/<block>                uint32 CRC-32 of each tile, one per kind: (gi, gj, K)
                                         or (gi, K); one chunk per tile, written last
    <store>/raygram.lock                 the build lease (see `raygram.build.lease`)

A tile is written iff its chunk of ``tiles/<block>`` exists: a worker writes the kernel
chunks first and the checksum chunk last, so a tile cut off mid-write counts as missing.

Kernel values are stored uncompressed: floating-point kernel values barely compress,
while compressing and decompressing them costs more CPU time per byte than a local disk
takes to write or read it, on the workers' write path and on every pass a solver makes
(measured in docs/benchmarks.md, "Scale"). Stores written with a compressor (by earlier
versions) read as before: zarr reads each array's codecs from its metadata.

The chunks of a local store therefore hold the values as they are, and tiles are written
to and read from those files directly (each chunk written aside and renamed into place,
so a write cut off leaves no partial chunk), in zarr's own layout: zarr opens and reads
every such store unchanged. zarr-python's synchronous API passes every chunk through one
event-loop thread, which held the workers' writes and the solvers' concurrent tile-row
reads to about one core; the direct path costs about half the CPU time a tile did
(docs/benchmarks.md, "Scale").
Object stores, and arrays with any other codecs, are read and written through zarr.

Every read of kernel values is verified (`VerifiedBlock`, which `gram`, `to_dask`,
`SymmetricGram` and the solver's `GramSource` read through): each written tile a read
touches is read whole and checked against its stored CRC-32, and for finite values (a
worker never stores others), before any of it is returned; a bad tile raises
`CorruptTile` naming the tile and the store. The check uses the per-tile CRC-32 that
every store already holds rather than zarr's own checksum codec (`Crc32cCodec`) for new
stores, because only the per-tile CRC (a) covers every store ever written, old ones
included, with one code path; (b) catches a deleted value chunk, which zarr reads as
its fill value without consulting any codec; (c) names the tile: a codec error does not
say which chunk failed. A partial slice costs no extra I/O for it: reads take whole
chunks (= tiles) anyway; the check adds one CRC-32 pass over each tile read and the
checksums of the block, read once per view.
Unwritten tiles (only readable with ``require_complete=False``) read as NaN.

`RAYGRAM_UNVERIFIED_READS=1` in the environment when a view is made turns the check
off: plain zarr reads. It exists only to measure what verification costs
(``benchmarks/solver_speed.py --no-verify-reads``); it is not part of the API.
"""
from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import mmap
import os
import threading
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import zarr
from zarr.codecs import BytesCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

from raygram.errors import ConfigError, CorruptTile, StoreError
from raygram.kernels.architecture import spec_json
from raygram.store.plan import Tile, TilePlan
from raygram.store.symmetric import SymmetricGram, index_spans

ATTRS_KEY = "raygram"
LOCK_KEY = "raygram.lock"
FORMAT = 1
UNVERIFIED_READS_ENV = "RAYGRAM_UNVERIFIED_READS"
_WRITE_CONFIG = {"write_empty_chunks": True}
VERIFY_READ_BYTES = 256 * 2**20  # values of one kind that one `verify` task reads at a time
# What zarr raises for metadata it cannot read: bad JSON, missing or mistyped fields, the
# wrong node type, an absent node, an unreadable file.
_METADATA_ERRORS = (ValueError, TypeError, LookupError, AttributeError, OSError)
_ORPHAN = ("checksum chunk missing: values without a checksum (a write in progress or cut off, "
           "or a lost checksum chunk)")


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
    """Everything that determines the stored values; two builds may share a store iff equal.

    Args:
      architecture: a layer list (recorded in canonical form), or a JSON-able mapping that
        already describes the kernel (e.g. a Python kernel's name and a digest of its
        traced computation).
      kinds: the stored kinds, e.g. ("nngp", "ntk").
      dtype: "float32" or "float64".
      x_train: training inputs (N, ...); hashed.
      x_test: test inputs (M, ...) or None; hashed.
      tile_size: points per tile side.
    """
    described = dict(architecture) if isinstance(architecture, Mapping) else json.loads(spec_json(architecture))
    return {"format": FORMAT,
            "architecture": described,
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


def _is_local(url: str) -> bool:
    """True for a path or a file://path, False for any other URL (s3://bucket/prefix, ...)."""
    return "://" not in url or url.startswith("file://")


def absolute_url(url: str | os.PathLike) -> str:
    """A store's URL as a `GramStore` keeps it: a local path or file://path made an absolute path.

    Resolved against this process's working directory, `~` expanded, symlinks kept (as
    written); an object-store URL is returned unchanged. A `GramStore` sent to a Ray
    actor or dask worker running in another folder then still means the same store.

    Args:
      url: a local folder (relative or absolute, optionally file://) or an fsspec URL.
    """
    url = os.fspath(url)
    if not _is_local(url):
        return url
    return str(Path(url.removeprefix("file://")).expanduser().absolute())


def open_backend(url: str, storage_options: dict | None = None, read_only: bool = False):
    """A zarr Store for a local folder (default) or an fsspec URL such as s3://bucket/prefix."""
    url = str(url)
    if not _is_local(url):
        return FsspecStore.from_url(url, storage_options=storage_options or {}, read_only=read_only)
    if storage_options:
        raise ConfigError(f"storage_options are only for object-store URLs, not the local path {url!r}")
    return LocalStore(url.removeprefix("file://"), read_only=read_only)


def checksum(values: np.ndarray) -> int:
    """CRC-32 of a tile's values as stored (C order, store dtype)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(values)).cast("B"))


# Chunk files of at least _DIRECT_MIN bytes, a multiple of _DIRECT_ALIGN, are written with
# O_DIRECT where the file system allows it: the copy into the page cache and its write-back
# take CPU time from the workers' kernels, and a Gram larger than memory does not stay
# cached anyway. Smaller chunks are written the ordinary way: a direct write waits for the
# disk, which costs a small tile more than the copy it saves.
_DIRECT = getattr(os, "O_DIRECT", None)
_DIRECT_ALIGN = 4096
_DIRECT_MIN = 2**20
_buffers = threading.local()


def _aligned_buffer(nbytes: int) -> mmap.mmap:
    """This thread's page-aligned buffer of `nbytes` (kept for its next chunk of that size)."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) != nbytes:
        buffer = _buffers.buffer = mmap.mmap(-1, nbytes)
    return buffer


def _write_file(path: Path, data: memoryview, direct: bool) -> None:
    """Write `data` as the new file `path`; with `direct`, past the page cache (O_DIRECT: `data`
    page-aligned, its size a multiple of `_DIRECT_ALIGN`) unless the file system refuses it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct:
        try:
            descriptor = os.open(path, flags | _DIRECT, 0o666)
        except OSError:  # EINVAL: a file system without direct I/O (tmpfs, some overlays)
            pass
        else:
            try:
                if os.write(descriptor, data) == len(data):
                    return
            except OSError:  # refused after all: written the ordinary way below
                pass
            finally:
                os.close(descriptor)
    with open(path, "wb") as f:
        f.write(data)


def _local_keys(root: Path, prefix: str) -> list[str]:
    """Keys (paths relative to `root`, "/"-separated) of the files below the folder `prefix`."""
    keys, folders = [], [prefix.rstrip("/")]
    while folders:
        folder = folders.pop()
        try:
            entries = os.scandir(root / folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                key = f"{folder}/{entry.name}"
                (folders if entry.is_dir(follow_symlinks=False) else keys).append(key)
    return keys


def corrupt_tile(url: str, tile: Tile, problem: str) -> CorruptTile:
    """The `CorruptTile` error for a bad tile: one line naming the tile, the store and the repair.

    Args:
      url: the store's URL or folder.
      tile: the bad tile (its block, row and column).
      problem: what is wrong, e.g. "ntk chunk missing".

    Returns:
      The error (to raise).
    """
    return CorruptTile(f"tile {tile} of the store {url} is corrupt ({problem}); run `raygram build --verify` "
                       "(build_gram(..., verify=True)) to recompute it")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _chunk_key(path: str, index: tuple[int, ...]) -> str:
    """The key of a chunk of the array at `path` (zarr v3's default chunk key encoding)."""
    return f"{path}/c/" + "/".join(map(str, index))


def _checked_attrs(attrs: Any, where: str) -> dict:
    """The raygram attributes if they describe a fingerprint and a tile plan, else StoreError."""
    try:
        plan = TilePlan(**attrs["plan"])
        described = attrs["fingerprint"]
        kinds, dtype = described["kinds"], np.dtype(described["dtype"])
        if not kinds or not all(isinstance(kind, str) for kind in kinds) or dtype.kind != "f":
            raise ValueError(f"kinds {kinds!r} and dtype {dtype} do not describe a Gram")
        if int(described["tile_size"]) != plan.tile_size:
            raise ValueError("the fingerprint's and the plan's tile sizes differ")
    except (TypeError, ValueError, LookupError) as e:
        raise StoreError(f"{where}: the raygram attributes are damaged ({_one_line(e)})") from None
    return attrs


class GramStore:
    """A build's zarr group: creation, tile bookkeeping, integrity checks and verified reading.

    Args:
      url: a local folder (a relative one, or file://path, is made absolute against the
        working directory here, see `absolute_url`), or an fsspec URL (s3://bucket/prefix).
      storage_options: fsspec options for a URL (credentials, `endpoint_url`); None for
        a local folder.
      read_only: open without write access.

    Picklable: Ray workers and dask tasks reopen it, at the same absolute folder whatever
    their working directory.
    """

    def __init__(self, url: str | os.PathLike, storage_options: dict | None = None, read_only: bool = False):
        self.url = absolute_url(url)
        self.storage_options = dict(storage_options or {})
        self.read_only = read_only
        self.backend = open_backend(self.url, self.storage_options, read_only)
        self._group = None
        self._attrs = None
        self._arrays = {}
        self._sums = {}  # block -> (written grid indices, their checksums), see `_tile_sums`

    def __reduce__(self):
        return GramStore, (self.url, self.storage_options, self.read_only)

    def __repr__(self):
        return f"GramStore({self.url!r})"

    # -- raw keys -----------------------------------------------------------------------------
    def _absent_folder(self) -> bool:
        """A local store whose folder does not exist (reading it must not create it)."""
        return isinstance(self.backend, LocalStore) and not self.backend.root.exists()

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes stored under `key` (a path relative to the store), or None if absent."""
        if self._absent_folder():
            return None
        buffer = sync(self.backend.get(key, prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def set_bytes(self, key: str, value: bytes, exclusive: bool = False) -> None:
        """Store `value` under `key`; with `exclusive`, FileExistsError if the key exists."""
        buffer = default_buffer_prototype().buffer.from_bytes(value)
        sync((self.backend.set_if_not_exists if exclusive else self.backend.set)(key, buffer))

    def delete_key(self, key: str) -> None:
        """Delete `key` (nothing happens if it is absent)."""
        sync(self.backend.delete(key))

    def has_key(self, key: str) -> bool:
        """Whether `key` exists."""
        return not self._absent_folder() and sync(self.backend.exists(key))

    def list_keys(self, prefix: str) -> list[str]:
        """Every key below `prefix` (e.g. "tiles/train_train/c/").

        A local store is listed with `os.scandir` directly (zarr's asynchronous listing of
        a local folder costs several times more per key, which shows when a build resumes
        a store of 10⁵ tiles); an object store with its own paginated LIST, through zarr.
        """
        if self._absent_folder():
            return []
        if isinstance(self.backend, LocalStore) and prefix.endswith("/"):
            return _local_keys(self.backend.root, prefix)

        async def collect():
            return [k async for k in self.backend.list_prefix(prefix)]
        return sync(collect())

    def location(self, key: str) -> str:
        """Where `key` lives, for messages: a local file path or the object's URL."""
        if isinstance(self.backend, LocalStore):
            return str(self.backend.root / key)
        return f"{self.url.rstrip('/')}/{key}"

    def modified(self, key: str) -> float | None:
        """When `key` was last written (POSIX seconds), or None if it is absent or the backend does not say."""
        try:
            if isinstance(self.backend, LocalStore):
                return (self.backend.root / key).stat().st_mtime
            info = sync(self.backend.fs._info(f"{self.backend.path}/{key}"))
        except FileNotFoundError:
            return None
        value = next((info[name] for name in ("LastModified", "mtime", "last_modified") if name in info), None)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        return None if value is None else float(value)

    # -- the group ----------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a Gram store (its zarr.json) is here.

        Raises:
          StoreError: something else is here: a file, or a folder (prefix) with other
            content but no zarr.json, which a build must not write into.
        """
        if isinstance(self.backend, LocalStore) and self.backend.root.is_file():
            raise StoreError(f"{self.url} is a file, not a folder")
        if self.get_bytes("zarr.json") is not None:
            return True

        async def first_entry():
            async for name in self.backend.list_dir(""):
                if name != LOCK_KEY:
                    return name
        found = None if self._absent_folder() else sync(first_entry())
        if found is not None:
            raise StoreError(f"{self.url} holds {found!r} but no zarr.json: it is not a raygram Gram store "
                             "(build into a new or empty location)")
        return False

    @property
    def group(self) -> zarr.Group:
        """The zarr group (opened on first use).

        Raises:
          StoreError: no store here, or its zarr.json is not a zarr group's metadata.
        """
        if self._group is None:
            if not self.exists():
                raise StoreError(f"no Gram store at {self.url} (nothing has been built there)")
            try:
                self._group = zarr.open_group(self.backend, mode="r" if self.read_only else "r+")
            except _METADATA_ERRORS as e:
                raise StoreError(f"{self.location('zarr.json')} is not readable zarr group metadata "
                                 f"({_one_line(e)}); {self.url} is not a usable Gram store") from None
        return self._group

    @property
    def attrs(self) -> dict[str, Any]:
        """The raygram attributes: {"fingerprint": ..., "plan": ...}.

        Raises:
          StoreError: no store here, a zarr group of something else, or damaged attributes.
        """
        if self._attrs is None:
            attrs = self.group.attrs.get(ATTRS_KEY)
            if attrs is None:
                raise StoreError(f"{self.url} is a zarr group but not a raygram Gram store "
                                 f"(no '{ATTRS_KEY}' attributes)")
            self._attrs = _checked_attrs(attrs, self.location("zarr.json"))
        return self._attrs

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
                                   fill_value=np.nan, config=_WRITE_CONFIG, compressors=None,
                                   dimension_names=_dimension_names(block))
            grid = plan.block_grid(block)
            group.create_array(f"tiles/{block}", shape=grid + (len(kinds),),
                               chunks=(1,) * len(grid) + (len(kinds),), dtype="uint32", fill_value=0,
                               config=_WRITE_CONFIG, compressors=None)
        self._group, self._attrs = group, None

    def array(self, kind: str, block: str) -> zarr.Array:
        """The raw zarr array of one kind and block (unverified reads; for writing and tests)."""
        if kind not in self.kinds:
            raise StoreError(f"the store at {self.url} holds kinds {list(self.kinds)}, not {kind!r}")
        if block not in self.plan.blocks:
            raise StoreError(f"the store at {self.url} has blocks {list(self.plan.blocks)}, not {block!r}")
        return self._open_array(f"{kind}/{block}")

    def _checksums(self, block: str) -> zarr.Array:
        return self._open_array(f"tiles/{block}")

    def _tile_sums(self, block: str, written: set[tuple[int, ...]]) -> tuple[np.ndarray, dict]:
        """The stored CRC-32 of the written tiles of a block, and the tiles whose checksum is unreadable.

        Returns (sums, {grid index: problem}): sums shaped grid + (kinds,), 0 where
        unwritten or unreadable. One concurrent zarr read of exactly the written tiles'
        checksum chunks (tile by tile only if one does not decode), kept for the next view
        of the block while its written tiles stay the same (a rewritten tile's new
        checksum is re-read where it no longer matches, see `VerifiedBlock`).
        """
        cached = self._sums.get(block)
        if cached is not None and cached[0] == written:
            return cached[1:]
        kinds, stored = len(self.kinds), self._checksums(block)
        sums, unreadable = np.zeros(self.plan.block_grid(block) + (kinds,), np.uint32), {}
        if written:
            index = np.array(sorted(written))
            where = tuple(np.repeat(column, kinds) for column in index.T) + (np.tile(np.arange(kinds), len(index)),)
            try:
                sums[where] = stored.get_coordinate_selection(where)
            except Exception:  # a checksum chunk that does not decode (whatever zarr raises): find it
                for tile in map(tuple, index):
                    try:
                        sums[tile] = stored[tile]
                    except Exception as e:
                        unreadable[tile] = f"checksum chunk unreadable ({_one_line(e)})"
        self._sums[block] = (frozenset(written), sums, unreadable)
        return sums, unreadable

    def _layout(self, path: str) -> tuple[tuple, tuple, np.dtype]:
        """(shape, chunks, dtype) that the plan gives the array at `path`."""
        plan, (name, block) = self.plan, path.split("/")
        if name == "tiles":
            grid, kinds = plan.block_grid(block), len(self.kinds)
            return grid + (kinds,), (1,) * len(grid) + (kinds,), np.dtype("uint32")
        shape = plan.block_shape(block)
        return shape, (plan.tile_size,) * len(shape), np.dtype(self.fingerprint["dtype"])

    def _chunk_files(self, path: str) -> Path | None:
        """The folder of the chunk files of the array at `path` when they hold its values as they
        are (a local store, zarr's `bytes` codec alone, little-endian, "/"-separated chunk keys:
        what `create` makes), else None. Reads and writes of such chunks take the files directly;
        any other store or layout goes through zarr."""
        metadata = self._open_array(path).metadata
        plain = (isinstance(self.backend, LocalStore) and metadata.codecs == (BytesCodec(endian="little"),)
                 and metadata.chunk_key_encoding == DefaultChunkKeyEncoding(separator="/"))
        return self.backend.root / path / "c" if plain else None

    def _write_chunk(self, path: str, index: tuple[int, ...], values: np.ndarray) -> None:
        """Store one whole chunk's values (unpadded at the edges): as a file written aside and
        renamed into place when the chunk files are plain (`_chunk_files`; a write cut off leaves
        no partial chunk), else through zarr."""
        array = self._open_array(path)
        folder = None if self.read_only else self._chunk_files(path)
        if folder is None:
            array[tuple(slice(i * c, i * c + n) for i, c, n in zip(index, array.chunks, values.shape))] = values
            return
        stored = np.dtype(array.dtype).newbyteorder("<")
        nbytes = math.prod(array.chunks) * stored.itemsize
        direct = _DIRECT is not None and nbytes >= _DIRECT_MIN and nbytes % _DIRECT_ALIGN == 0
        chunk = (np.frombuffer(_aligned_buffer(nbytes), stored).reshape(array.chunks) if direct
                 else np.empty(array.chunks, stored))
        if values.shape != array.chunks:  # an edge chunk: zarr's padding, its fill value
            chunk.fill(array.metadata.fill_value)
        chunk[tuple(map(slice, values.shape))] = values
        target = folder.joinpath(*map(str, index))
        target.parent.mkdir(parents=True, exist_ok=True)
        aside = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.partial")
        _write_file(aside, memoryview(chunk).cast("B"), direct)
        os.replace(aside, target)

    def _open_array(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            where = self.location(f"{path}/zarr.json")
            try:
                array = zarr.open_array(self.backend, path=path, mode="r" if self.read_only else "r+")
            except _METADATA_ERRORS as e:
                raise StoreError(f"{where} is not readable zarr array metadata ({_one_line(e)}); the store "
                                 f"{self.url} is damaged") from None
            found, wanted = (array.shape, array.chunks, array.dtype), self._layout(path)
            if found != wanted:
                raise StoreError(f"{where} describes shape, chunks, dtype {found}; the store's plan needs {wanted}")
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
            self._write_chunk(f"{kind}/{tile.block}", tile.index, tile_values)
            sums.append(checksum(tile_values))
        self._write_chunk(f"tiles/{tile.block}", tile.index + (0,),
                          np.asarray(sums, dtype="uint32").reshape((1,) * len(tile.index) + (-1,)))
        return sums

    def _chunk_indices(self, path: str, ndim: int) -> set[tuple[int, ...]]:
        """Grid indices (first `ndim` coordinates) of the chunks stored for the array at `path`."""
        prefix = f"{path}/c/"
        found = set()
        for key in self.list_keys(prefix):
            parts = key[len(prefix):].split("/")
            if all(p.isdigit() for p in parts):  # not e.g. a temporary file of a write cut off
                found.add(tuple(int(p) for p in parts[:ndim]))
        return found

    def _written(self, block: str) -> set[tuple[int, ...]]:
        """Grid indices of the block's written tiles: those whose checksum chunk exists (one listing)."""
        return self._chunk_indices(f"tiles/{block}", len(self.plan.block_grid(block)))

    def written_tiles(self) -> set[Tile]:
        """Tiles whose checksum chunk exists (one listing per block)."""
        return {Tile(block, *index) for block in self.plan.blocks for index in self._written(block)}

    def forget_tiles(self, tiles: Iterable[Tile]) -> None:
        """Mark tiles unwritten so the next build recomputes them: their checksum chunks first, then their values."""
        for tile in tiles:
            self.delete_key(_chunk_key(f"tiles/{tile.block}", tile.index + (0,)))
            for kind in self.kinds:
                self.delete_key(_chunk_key(f"{kind}/{tile.block}", tile.index))

    def _listed_problems(self, block: str, written: set[tuple[int, ...]]) -> dict[tuple[int, ...], str]:
        """{grid index: problem} of the block's tiles whose chunks, as listed, contradict their
        checksums: a written tile missing a value chunk, or value chunks without a checksum."""
        ndim = len(self.plan.block_grid(block))
        values = {kind: self._chunk_indices(f"{kind}/{block}", ndim) for kind in self.kinds}
        problems = {}
        for tile in self.plan.tiles(block):
            missing = [kind for kind in self.kinds if tile.index not in values[kind]]
            if tile.index in written and missing:
                problems[tile.index] = f"{missing[0]} chunk missing"
            elif tile.index not in written and len(missing) < len(self.kinds):
                problems[tile.index] = _ORPHAN
        return problems

    def verify(self, tiles: Iterable[Tile] | None = None) -> dict[Tile, str]:
        """Re-read tiles and compare with their checksums: {tile: problem} for bad ones.

        The tiles are read a tile row at a time (one read per row and kind, as the
        solvers read; at most `VERIFY_READ_BYTES` a read), the rows as tasks on the active
        dask scheduler (threads by default; Ray's inside a Ray job), so `verify` runs at
        the store's read speed, not one tile at a time in one thread. Only a row that
        fails is re-read tile by tile, to name every bad tile in it.

        Args:
          tiles: the tiles to check; None: every tile of the plan.

        Returns:
          {tile: problem} of the bad ones: a written tile whose value chunk is missing,
          cannot be decoded, fails its checksum or holds non-finite values, and a tile
          whose values are stored without a checksum chunk (a write cut off, or a lost
          checksum). Unwritten tiles without values are not problems here (see `status`).
        """
        import dask

        plan = self.plan
        wanted = set(plan.tiles()) if tiles is None else set(tiles)
        problems, tasks = {}, []
        for block in plan.blocks:
            candidates = sorted(t for t in wanted if t.block == block)
            if not candidates:
                continue
            written = self._written(block)
            listed = self._listed_problems(block, written)
            problems.update({t: listed[t.index] for t in candidates if t.index in listed})
            sums, unreadable = self._tile_sums(block, written)
            readers = [VerifiedBlock(self, kind, block, written, sums[..., k], unreadable)
                       for k, kind in enumerate(self.kinds)]
            tile_bytes = plan.tile_size ** 2 * np.dtype(self.fingerprint["dtype"]).itemsize
            per_read = max(1, VERIFY_READ_BYTES // tile_bytes)
            runs: dict[tuple[int, int], list[tuple[int, ...]]] = {}  # (tile row, part) -> tiles read together
            for tile in candidates:
                if tile.index not in listed and tile.index in written:
                    runs.setdefault((tile.index[0], tile.index[-1] // per_read), []).append(tile.index)
            tasks += [dask.delayed(_verify_row)(readers, block, indices) for indices in runs.values()]
        for found in dask.compute(*tasks):
            problems.update(found)
        return problems

    def status(self) -> dict[str, Any]:
        """How complete the store is, from listings only (no values are read).

        Returns:
          {"store", "complete", "tiles_done", "tiles_total", "blocks": {block: {tiles_done,
          tiles_total, entries_done, entries_total}}, "corrupt_tiles": {tile id: problem},
          "values_checked": False, "plan", "fingerprint"}. "corrupt_tiles" holds what the
          listings show (a written tile missing a value chunk, values without a checksum);
          a changed value shows only in `verify`, hence "values_checked" False. "complete"
          is True iff every tile is written and none is listed as corrupt.
        """
        plan = self.plan
        blocks, corrupt = {}, {}
        for block in plan.blocks:
            written = self._written(block)
            corrupt.update({str(Tile(block, *index)): problem
                            for index, problem in sorted(self._listed_problems(block, written).items())})
            tiles = list(plan.tiles(block))
            done = [t for t in tiles if t.index in written]
            blocks[block] = {"tiles_done": len(done), "tiles_total": len(tiles),
                             "entries_done": sum(plan.entries(t) for t in done),
                             "entries_total": sum(plan.entries(t) for t in tiles)}
        tiles_done = sum(b["tiles_done"] for b in blocks.values())
        tiles_total = sum(b["tiles_total"] for b in blocks.values())
        return {"store": self.url, "complete": tiles_done == tiles_total and not corrupt, "tiles_done": tiles_done,
                "tiles_total": tiles_total, "blocks": blocks, "corrupt_tiles": corrupt, "values_checked": False,
                "plan": plan.to_dict(), "fingerprint": self.fingerprint}

    # -- reading ------------------------------------------------------------------------------
    def reader(self, kind: str = "ntk", block: str = "train_train", require_complete: bool = True) -> "VerifiedBlock":
        """A block as stored, read numpy-style with every tile verified (`VerifiedBlock`).

        Args:
          kind: "nngp" or "ntk" (one of the store's kinds).
          block: "train_train" (its upper tiles only; `gram` gives the full matrix),
            "test_train" or "test_diag".
          require_complete: refuse a block with unwritten tiles.

        Returns:
          The block's `VerifiedBlock`: (N, N), (M, N) or (M,).

        Raises:
          StoreError: an unknown kind or block, or (with `require_complete`) unwritten
            tiles.
          CorruptTile: (with `require_complete`) a tile whose values are stored without
            their checksum.
        """
        self.array(kind, block)  # an unknown kind or block fails here
        written = self._written(block)
        if require_complete:
            self._require_complete(block, written)
        if os.environ.get(UNVERIFIED_READS_ENV) == "1":
            return VerifiedBlock(self, kind, block, written, None)
        sums, unreadable = self._tile_sums(block, written)
        return VerifiedBlock(self, kind, block, written, sums[..., self.kinds.index(kind)], unreadable)

    def _require_complete(self, block: str, written: set[tuple[int, ...]]) -> None:
        missing = [t for t in self.plan.tiles(block) if t.index not in written]
        if not missing:
            return
        listed = self._listed_problems(block, written)
        orphan = next((t for t in missing if t.index in listed), None)
        if orphan is not None:  # a build cut off mid-write, or a lost checksum chunk
            raise corrupt_tile(self.url, orphan, f"{listed[orphan.index]}; {block} is incomplete")
        raise StoreError(f"{block} of {self.url} is incomplete: {len(missing)} tiles not written "
                         f"(first {missing[0]}); run the build again to finish it")

    def gram(self, kind: str = "ntk", block: str = "train_train", require_complete: bool = True):
        """Lazy, verified view of a block: the full symmetric matrix for train_train, else the block.

        Args:
          kind: "nngp" or "ntk".
          block: "train_train", "test_train" or "test_diag".
          require_complete: refuse a block with unwritten tiles (else they read as NaN).

        Returns:
          A `SymmetricGram` (N, N) for train_train, else a `VerifiedBlock` (M, N) or (M,).
          Both slice like numpy arrays (ints and unit-step slices), raise `CorruptTile`
          for a bad tile, and go into `dask.array.from_array` (see `to_dask`).

        Raises:
          StoreError, CorruptTile: as `reader`.
        """
        view = self.reader(kind, block, require_complete)
        return SymmetricGram(view) if block == "train_train" else view

    def to_dask(self, kind: str = "ntk", block: str = "train_train", require_complete: bool = True):
        """A dask array of a block with one chunk per tile, each verified as it is read.

        The view is inlined into each read task: Ray's dask scheduler rebuilds dataclass
        arguments (a zarr array is one) from their fields, which fails for zarr's metadata.

        Args:
          kind: "nngp" or "ntk".
          block: "train_train", "test_train" or "test_diag".
          require_complete: refuse a block with unwritten tiles (else they read as NaN).

        Returns:
          A dask array (N, N), (M, N) or (M,) with `tile_size` chunks.

        Raises:
          StoreError, CorruptTile: as `reader` (a bad tile raises `CorruptTile` when computed).
        """
        import dask.array as da

        view = self.gram(kind, block, require_complete)
        name = "raygram-" + hashlib.sha256(
            json.dumps([self.url, self.fingerprint, kind, block], sort_keys=True).encode()).hexdigest()[:24]
        return da.from_array(view, chunks=view.chunks, name=name, asarray=True, inline_array=True)


class VerifiedBlock:
    """One block of one kind, read numpy-style; each written tile a read touches is read whole
    and checked before any of it is returned.

    Made by `GramStore.reader` (and `gram`). A tile is checked against its stored CRC-32
    and for finite values; a bad one raises `CorruptTile` naming it. A read covering
    several tiles reads each tile's chunk file and checks it in the buffer it was read
    into (a local store, see the module docstring), or is one zarr read (its chunks
    fetched concurrently) checked tile by tile. Unwritten tiles (and train_train's
    unstored tiles below the diagonal) read as NaN unchecked. Picklable (dask and Ray
    tasks take it).

    Args:
      store: the `GramStore`.
      kind: "nngp" or "ntk".
      block: "train_train", "test_train" or "test_diag".
      written: grid indices of the tiles whose checksum chunk exists.
      sums: this kind's stored CRC-32 per tile, shaped as the tile grid; None: no checks
        (plain zarr reads).
      bad: {grid index: problem} of tiles known to be bad (their checksum chunk does not
        decode); reading them raises `CorruptTile`.

    Attributes:
      shape, dtype, chunks, ndim: as the zarr array's.
      files: the folder of the chunk files read directly, or None (read through zarr).
    """

    def __init__(self, store: GramStore, kind: str, block: str, written: Iterable[tuple[int, ...]],
                 sums: np.ndarray | None, bad: Mapping[tuple[int, ...], str] | None = None):
        self.store, self.kind, self.block = store, kind, block
        self.bad = dict(bad or {})
        self.values = store.array(kind, block)
        self.shape, self.dtype, self.chunks = self.values.shape, self.values.dtype, tuple(self.values.chunks)
        self.ndim = len(self.shape)
        self.written = frozenset(written)
        self.sums = sums
        self.files = store._chunk_files(f"{kind}/{block}")  # None: read through zarr

    def __repr__(self):
        return f"VerifiedBlock({self.store.url!r}, {self.kind!r}, {self.block!r}, shape={self.shape})"

    def __getitem__(self, key) -> np.ndarray:
        if self.sums is None:
            return np.asarray(self.values[key])
        spans = index_spans(key, self.shape)
        t = self.chunks[0]
        first = [start // t for start, _, _ in spans]
        last = [-(-stop // t) if stop > start else start // t for start, stop, _ in spans]
        data = self._read(first, last)
        crop = tuple(start - f * t if squeeze else slice(start - f * t, stop - f * t)
                     for (start, stop, squeeze), f in zip(spans, first))
        return data[crop]

    def _read(self, first: list[int], last: list[int]) -> np.ndarray:
        """Tiles [first, last) of the grid in one read, every written one checked."""
        t = self.chunks[0]
        cover = tuple(slice(f * t, min(stop * t, n)) for f, stop, n in zip(first, last, self.shape))
        indices = list(itertools.product(*map(range, first, last)))
        if self.files is not None:  # tile by tile, each checked in the buffer it was read into
            data = np.empty(tuple(s.stop - s.start for s in cover), self.dtype)
            for index in indices:
                values, problem = self._file_tile(index)
                if problem is not None:
                    raise corrupt_tile(self.store.url, Tile(self.block, *index), problem)
                data[self._within(index, first)] = values
            return data
        tiles = [index for index in indices if index in self.written]
        try:
            data = np.asarray(self.values[cover])
        except Exception:  # a chunk that does not decode (any codec error): name the tile if it is one
            for index in tiles:
                problem = self.problem(index)
                if problem is not None:
                    raise corrupt_tile(self.store.url, Tile(self.block, *index), problem) from None
            raise
        for index in tiles:
            problem = self._check(index, data[self._within(index, first)])
            if problem is not None:
                raise corrupt_tile(self.store.url, Tile(self.block, *index), problem)
        return data

    def _within(self, index: tuple[int, ...], first: list[int]) -> tuple[slice, ...]:
        """Where tile `index` lies in a read that starts at tile `first`."""
        t = self.chunks[0]
        return tuple(slice((i - f) * t, min((i + 1) * t, n) - f * t) for i, f, n in zip(index, first, self.shape))

    def _file_tile(self, index: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
        """A tile's values (unpadded) from its chunk file, and what is wrong with them if it is
        written (None: good, or unwritten). An absent chunk reads as the fill value, as in zarr."""
        t = self.chunks[0]
        shape = tuple(min((i + 1) * t, n) - i * t for i, n in zip(index, self.shape))
        stored = np.dtype(self.dtype).newbyteorder("<")
        try:
            raw = np.fromfile(self.files.joinpath(*map(str, index)), stored)
        except FileNotFoundError:
            values = np.full(shape, self.values.metadata.fill_value, self.dtype)
        except OSError as e:
            return None, f"{self.kind} chunk unreadable ({_one_line(e)})"
        else:
            if raw.size != t ** self.ndim:
                expected = t ** self.ndim * stored.itemsize
                return None, f"{self.kind} chunk unreadable ({raw.nbytes} bytes, not {expected})"
            values = raw.reshape((t,) * self.ndim)[tuple(map(slice, shape))]
        return values, self._check(index, values) if index in self.written else None

    def _check(self, index: tuple[int, ...], values: np.ndarray) -> str | None:
        """What is wrong with a written tile's values as read, or None."""
        if index in self.bad:
            return self.bad[index]
        values = np.ascontiguousarray(values)  # one copy (of a tile inside a wider read) serves both checks
        found = checksum(values)
        if found != int(self.sums[index]) and found != self._stored_sum(index):
            missing = not self.store.has_key(_chunk_key(f"{self.kind}/{self.block}", index))
            return f"{self.kind} chunk " + ("missing" if missing else "checksum mismatch")
        if not np.isfinite(values).all():
            return f"{self.kind} values not finite"
        return None

    def _stored_sum(self, index: tuple[int, ...]) -> int:
        """The tile's checksum as stored now (a tile rewritten since the view was made may have a new one),
        or -1 if it cannot be read."""
        try:
            return int(self.store._checksums(self.block)[index][self.store.kinds.index(self.kind)])
        except Exception:  # gone or undecodable: the tile is bad either way, as its values already failed
            return -1

    def problem(self, index: tuple[int, ...]) -> str | None:
        """Read one written tile alone and say what is wrong with it.

        Args:
          index: the tile's grid index, (i, j) or (i,).

        Returns:
          None for a good tile, else e.g. "ntk chunk missing", "ntk chunk checksum
          mismatch", "ntk chunk unreadable (...)" or "ntk values not finite".
        """
        if self.files is not None:
            return self._file_tile(index)[1]
        region = self.store.plan.region(Tile(self.block, *index))
        try:
            values = np.asarray(self.values[region])
        except Exception as e:  # a chunk that does not decode, whatever the codec raises
            return f"{self.kind} chunk unreadable ({_one_line(e)})"
        return self._check(index, values)


def _verify_row(readers: list[VerifiedBlock], block: str, indices: list[tuple[int, ...]]) -> dict[Tile, str]:
    """{tile: problem} of the written tiles `indices` (all in one tile row, at most
    `VERIFY_READ_BYTES` of values a kind) of one block.

    Each kind's tiles are read in one read from the first to the last and checked
    (`VerifiedBlock`); only if that fails is each tile read alone, to name every bad one.
    """
    first, last = min(indices), max(indices)
    found = {}
    for reader in readers:
        try:
            reader._read(list(first), [i + 1 for i in last])
        except Exception:  # a bad tile in the row (CorruptTile, or a chunk that does not decode): find each
            for index in indices:
                problem = reader.problem(index)
                if problem is not None and Tile(block, *index) not in found:
                    found[Tile(block, *index)] = problem
    return found


def _dimension_names(block: str) -> tuple[str, ...]:
    return {"train_train": ("train", "train"), "test_train": ("test", "train"),
            "test_diag": ("test",)}[block]
