"""The build lease: at most one build writes a store at a time, and a crash cannot wedge it.

A build holds the key ``raygram.lock`` of its store: JSON with its host, pid, a random
token and an expiry time. A background thread renews the expiry every `ttl / 3`
seconds. Another build refuses while the lease is live; it takes the lease over when it
has expired (the holder stopped renewing: crashed, killed or cut off) or when the holder
ran on the same host and its process is gone (so a killed build can be rerun at once).
Object stores have no atomic create-if-absent through fsspec, so two builds racing for
a free lease could both think they won; each renewal therefore re-reads the lease and a
build that finds another token there stops (`LeaseLost`).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

LOCK_KEY = "raygram.lock"


class StoreLocked(RuntimeError):
    """Another build holds the store's lease."""


class LeaseLost(RuntimeError):
    """This build's lease was taken over while it ran."""


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildLease:
    """Context manager holding the lease of a `GramStore` for one build."""

    def __init__(self, store, ttl: float = 60.0):
        self.store = store
        self.ttl = float(ttl)
        self.token = uuid.uuid4().hex
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "acquired": now, "expires": now + self.ttl}).encode()

    def holder(self) -> dict | None:
        """The current lease record, or None when the store is free."""
        raw = self.store.get_bytes(LOCK_KEY)
        return None if raw is None else json.loads(raw)

    @staticmethod
    def stale(record: dict) -> bool:
        if record["expires"] < time.time():
            return True
        return record["host"] == socket.gethostname() and not process_alive(record["pid"])

    def check_free(self) -> dict | None:
        """Raise `StoreLocked` if a live build holds the lease; else the stale record (or None)."""
        holder = self.holder()
        if holder is not None and not self.stale(holder):
            raise StoreLocked(
                f"another build is writing {self.store.url}: pid {holder['pid']} on host "
                f"{holder['host']}, lease renewed until {time.ctime(holder['expires'])}. Wait for it "
                f"to finish (a crashed build's lease expires within {self.ttl:.0f} s).")
        return holder

    def acquire(self) -> None:
        """Take the lease or raise `StoreLocked` (without writing anything)."""
        if self.check_free() is not None:
            self.store.delete_key(LOCK_KEY)
        try:
            self.store.set_bytes(LOCK_KEY, self._record(), exclusive=True)
        except FileExistsError:
            raise StoreLocked(f"another build took the lease of {self.store.url} just now") from None
        if self.holder()["token"] != self.token:
            raise StoreLocked(f"another build took the lease of {self.store.url} just now")
        self._thread = threading.Thread(target=self._renew, name="raygram-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                holder = self.holder()
                if holder is None or holder["token"] != self.token:
                    self.lost.set()
                    return
                self.store.set_bytes(LOCK_KEY, self._record())
            except Exception:  # a transient store error: try again at the next renewal
                continue

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"the lease of {self.store.url} was taken over by another build; "
                            "this build stopped so that the two do not interleave")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.holder()
        if holder is not None and holder["token"] == self.token:
            self.store.delete_key(LOCK_KEY)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
