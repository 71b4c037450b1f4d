"""`TileWorker`: the Ray actor that computes Gram tiles and writes them into the store.

One long-lived actor per GPU (or per CPU worker): it loads the kernel from its `KernelSource`,
compiles one executable per tile shape (off-diagonal, diagonal, test self-kernels),
computes a tile (a molecular kernel's on the tile's real atoms only, without the
padding: `raygram.kernels.atoms.RaggedTiles`), checks it is finite, writes it straight
into the zarr store and returns only the tile id and timings to the driver.

A worker that Ray gave GPUs checks, before its first use of JAX, that JAX sees a GPU: a
node whose JAX has no GPU support (a CPU-only `jaxlib`, missing CUDA libraries) would
otherwise compute every tile on its CPU without a word. `RAYGRAM_EMULATED_GPUS=1` (in the
node's or the driver's environment) turns the check off, for clusters whose nodes only
advertise GPUs (`ray start --num-gpus=1` on a CPU machine, as the multi-node tests do).
"""
from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np

from raygram.errors import BuildError, CompileFailed
from raygram.store.plan import Tile, TilePlan

EMULATED_GPUS = "RAYGRAM_EMULATED_GPUS"  # "1": GPUs given by Ray need not be visible to JAX


def jax_env(num_gpus: float, num_cpus: float = 1) -> dict[str, str]:
    """Environment for a worker process: JAX must not grab a whole GPU it shares.

    XLA preallocates 75% of a GPU by default; with several actors per GPU each takes
    only its share (`num_gpus`, minus headroom for CUDA contexts) and allocates on
    demand. CPU workers are kept off any GPU of the node, and a one-CPU worker runs
    XLA single-threaded: local builds run one worker per core, and XLA's own threads
    would only fight over the same cores. The driver's own `XLA_FLAGS` (e.g. the CPU
    code cap of `raygram._neural_tangents` on JAX 0.10) are kept.
    """
    if num_gpus <= 0:
        env = {"JAX_PLATFORMS": "cpu"}
        if num_cpus <= 1:
            own = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {own}".strip()  # after the driver's
        return env
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if num_gpus < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * num_gpus:.3f}"
    if os.environ.get(EMULATED_GPUS):  # the driver's opt-out reaches every worker
        env[EMULATED_GPUS] = os.environ[EMULATED_GPUS]
    return env


def check_gpus(gpu_ids, platforms, environ=None) -> None:
    """Refuse a worker that Ray gave GPUs but whose JAX sees none.

    Args:
      gpu_ids: the GPU ids Ray assigned to the worker (`ray.get_gpu_ids()`); empty for a
        CPU worker, which passes.
      platforms: the platforms of the devices JAX sees (`{d.platform for d in jax.devices()}`).
      environ: the environment to read `RAYGRAM_EMULATED_GPUS` from (default `os.environ`);
        "1" turns the check off.

    Raises:
      BuildError: GPUs were given but JAX sees only CPUs, naming the host and the opt-out.
    """
    environ = os.environ if environ is None else environ
    if not gpu_ids or set(platforms) - {"cpu"} or environ.get(EMULATED_GPUS) == "1":
        return
    raise BuildError(
        f"the tile worker on host {socket.gethostname()} was given GPU(s) {list(gpu_ids)} by Ray, but JAX there "
        f"sees only {sorted(platforms)} devices: install JAX with GPU support on that node (e.g. "
        f"'jax[cuda12]', and check that CUDA_VISIBLE_DEVICES is not emptied), or, on a cluster that only "
        f"advertises GPUs, set {EMULATED_GPUS}=1")


class TileWorker:
    """Computes tiles of one build (use as `ray.remote(TileWorker).options(...).remote(...)`).

    `x_train` (N, ...) and `x_test` (M, ...) arrive through Ray's object store once per
    actor; `store` is a `GramStore` (reopened here from its URL). Run as a threaded
    actor (`max_concurrency=2`): one call computes while the previous one writes its
    tile, and a lock keeps the device to one tile at a time.
    """

    def __init__(self, kernel, kinds, dtype, x_train, x_test):
        import jax

        jax.config.update("jax_enable_x64", np.dtype(dtype) == np.float64)
        self.kernel = kernel
        self._kernel_fn = None
        self.kinds = tuple(kinds)
        self.dtype = np.dtype(dtype)
        self.x = {"train": np.asarray(x_train, self.dtype),
                  "test": None if x_test is None else np.asarray(x_test, self.dtype)}
        self.store = self.plan = None
        self.compiled = {}
        self.ragged = self.flat = self._counts = None
        self.device = threading.Lock()
        self.last_compute_end = None
        self._devices_checked = False

    def check_devices(self) -> None:
        """`check_gpus` for this worker, once; every method that uses JAX calls it first.

        Not in `__init__`: an exception there kills the actor, and the driver sees only an
        actor that died, not this error.
        """
        if self._devices_checked:
            return
        import jax
        import ray

        check_gpus(ray.get_gpu_ids(), {d.platform for d in jax.devices()})
        self._devices_checked = True

    @property
    def kernel_fn(self):
        """The build's `kernel_fn(x1, x2, get)`, made from its `KernelSource` on first use.

        Not in `__init__`: a kernel this worker cannot load (a Python kernel from a package
        that is not installed on this node) then fails the first call with one
        `CompileFailed`, instead of killing every actor that replaces this one.
        """
        if self._kernel_fn is None:
            try:
                self._kernel_fn = self.kernel.kernel_fn()
            except Exception as e:  # noqa: BLE001 - unpickling user code can raise anything
                raise CompileFailed(f"the kernel cannot be loaded on host {socket.gethostname()}: "
                                    f"{type(e).__name__}: {' '.join(str(e).split())} (a Python kernel's "
                                    "installed packages must be installed on every node)") from None
        return self._kernel_fn

    # -- memory model ---------------------------------------------------------------------------
    def tile_memory(self, sizes) -> list[int]:
        """XLA's peak bytes (arguments + outputs + temporaries) of an off-diagonal tile per size.

        For molecules built ragged (`_ragged`) a tile is its ragged cross program plus, when
        the build has test points, the test self-kernels' program (padded molecules,
        t·A² atom pairs, which can outgrow a ragged tile's chunk pairs): the two never run
        at once, so their sum bounds either, and it stays quadratic in the size as the
        scheduler's fit (`fit_tile_size`) needs.
        """
        import jax

        self.check_devices()
        out = []
        for t in sizes:
            x = jax.ShapeDtypeStruct((t,) + self.x["train"].shape[1:], self.dtype)
            ragged = self._ragged(t)
            if ragged is None:
                fn = jax.jit(lambda a, b: self.kernel_fn(a, b, self.kinds))
                out.append(_peak_bytes(fn.lower(x, x)))
                continue
            side = ragged.shapes(self._atom_shape(), self.dtype)
            peak = _peak_bytes(jax.jit(ragged.cross).lower(*side, *side))
            if self.x["test"] is not None:
                peak += _peak_bytes(jax.jit(self._self_kernel()).lower(x))
            out.append(peak)
        return out

    def memory_budget(self, workers_per_device: int) -> int:
        """Bytes one worker may use for a tile: its share of the device (GPU) or of free RAM."""
        import jax
        import psutil

        self.check_devices()
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(0.8 * stats["bytes_limit"])
        return int(0.5 * psutil.virtual_memory().available / max(1, workers_per_device))

    # -- tiles ----------------------------------------------------------------------------------
    def prepare(self, plan: dict, store) -> dict:
        """Adopt the build's plan and store, compile every tile shape it needs.

        Returns the compile seconds, the number of compiled programs (`executables`), this
        process's pid and host, and the Ray node it runs on (id and IP). The driver sends
        tiles only once this has returned (a threaded actor does not keep call order).
        """
        import ray

        self.check_devices()
        start = time.perf_counter()
        self.plan = TilePlan(**plan)
        self.store = store
        with self.device:
            self._compile()
            self.last_compute_end = time.perf_counter()
        context = ray.get_runtime_context()
        return {"compile_s": time.perf_counter() - start, "executables": len(self.compiled),
                "pid": os.getpid(), "host": socket.gethostname(),
                "node": context.get_node_id(), "ip": ray.util.get_node_ip_address()}

    def _ragged(self, tile_size: int):
        """`RaggedTiles` at this tile size when the kernel is molecular, else None.

        A kernel is molecular when `raygram.kernels.atoms.atom_kernel` finds the per-atom
        kernel that `AtomSum` marks its kernel_fn with (an architecture whose first entry is
        AtomSum, or a Python kernel made with `AtomSum`): its tiles are then computed on
        their real atoms (mask not 0) only, with the same values, instead of on all A x A'
        atom pairs of the padded molecules. The chunk follows the training molecules' mean
        atom count, the window the fewest atoms of any molecule.
        """
        from raygram.kernels.atoms import RaggedTiles, atom_counts, atom_kernel

        atom_fn = atom_kernel(self.kernel_fn)
        if atom_fn is None:
            return None
        if self._counts is None:
            self._counts = {name: atom_counts(x) for name, x in self.x.items() if x is not None}
        arrays = [x for x in self.x.values() if x is not None]
        fewest = min(int(c.min()) for c in self._counts.values())
        return RaggedTiles(atom_fn, self.kinds, tile_size, max(x.shape[1] for x in arrays),
                           float(self._counts["train"].mean()), fewest)

    def _atom_shape(self) -> tuple[int, ...]:
        """The shape of one atom as the per-atom kernel sees it: without the molecule axes and the mask channel."""
        shape = self.x["train"].shape
        return tuple(shape[2:-1]) + (shape[-1] - 1,)

    def _self_kernel(self):
        """k(x, x) of each input of a batch: the test self-kernels (molecules padded, as they are few)."""
        import jax

        kernel_fn, kinds = self.kernel_fn, self.kinds
        return jax.vmap(lambda xi: kernel_fn(xi[None], None, kinds))

    def _compile(self):
        """Compile the build's programs: cross and square tiles, and the test self-kernels.

        One program per tile kind, whatever the tile: padded molecules or not, every tile of
        a kind has one shape (ragged tiles loop over as many chunk pairs as they have).
        """
        import jax
        from raygram.kernels.atoms import FlatMolecules

        t = self.plan.tile_size
        probe = np.repeat(self.x["train"][:1], t, axis=0)
        kernel_fn, kinds = self.kernel_fn, self.kinds
        self.ragged = self._ragged(t)
        if self.ragged is None:
            self.compiled["cross"] = jax.jit(lambda a, b: kernel_fn(a, b, kinds)).lower(probe, probe).compile()
            self.compiled["square"] = jax.jit(lambda a: kernel_fn(a, None, kinds)).lower(probe).compile()
        else:
            self.flat = {name: FlatMolecules(x) for name, x in self.x.items() if x is not None}
            side = self.ragged.shapes(self._atom_shape(), self.dtype)
            self.compiled["cross"] = jax.jit(self.ragged.cross).lower(*side, *side).compile()
            self.compiled["square"] = jax.jit(self.ragged.square).lower(*side).compile()
        if self.plan.n_test:
            self.compiled["self"] = jax.jit(self._self_kernel()).lower(probe).compile()

    def _side(self, name: str, span: slice):
        """A ragged tile side: the real atoms of molecules `span` of x_train or x_test (`FlatMolecules.side`)."""
        return self.flat[name].side(span.start, span.stop, self.ragged.length, self.ragged.chunk)

    def _kernel(self, tile: Tile) -> dict[str, np.ndarray]:
        """Unpadded values of each kind for a tile."""
        plan = self.plan
        x_train, x_test = self.x["train"], self.x["test"]
        if tile.block == "test_diag":
            out = self.compiled["self"](plan.padded_rows(x_test, tile.i))
            rows = plan.region(tile)[0]
            return {k: np.asarray(v).reshape(-1)[:rows.stop - rows.start] for k, v in zip(self.kinds, out)}
        rows, cols = plan.region(tile)
        square = tile.block == "train_train" and tile.i == tile.j
        if self.ragged is not None:
            first = self._side("train" if tile.block == "train_train" else "test", rows)
            out = (self.compiled["square"](*first) if square
                   else self.compiled["cross"](*first, *self._side("train", cols)))
        else:
            x1 = x_train if tile.block == "train_train" else x_test
            out = (self.compiled["square"](plan.padded_rows(x1, tile.i)) if square
                   else self.compiled["cross"](plan.padded_rows(x1, tile.i), plan.padded_rows(x_train, tile.j)))
        return {k: np.asarray(v)[:rows.stop - rows.start, :cols.stop - cols.start]
                for k, v in zip(self.kinds, out)}

    def run(self, tile: Tile) -> dict:
        """Compute one tile and write it into the store; returns its id and timings (seconds).

        `idle_s` is how long the device waited for this tile since the previous one
        finished computing; writes overlap the next tile's compute.
        """
        with self.device:
            start = time.perf_counter()
            idle = start - self.last_compute_end
            try:
                values = self._kernel(tile)
            finally:
                self.last_compute_end = computed = time.perf_counter()
        for kind, v in values.items():
            if not np.isfinite(v).all():
                raise FloatingPointError(
                    f"tile {tile}: the {kind} kernel has {int((~np.isfinite(v)).sum())} non-finite "
                    f"values out of {v.size}")
        self.store.write_tile(tile, values)
        return {"tile": tile, "pid": os.getpid(), "compute_s": computed - start,
                "write_s": time.perf_counter() - computed, "idle_s": idle}


def _peak_bytes(lowered) -> int:
    """XLA's peak bytes (arguments + outputs + temporaries) of a lowered program, compiled."""
    stats = lowered.compile().memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)
