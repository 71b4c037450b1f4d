"""The build lease: at most one build writes a store at a time, and a crash cannot wedge it.

A build holds the key ``raygram.lock`` of its store: JSON with its host, pid, a random
token and an expiry time. A background thread renews the expiry every `ttl / 3`
seconds. Another build refuses while the lease is live; it takes the lease over when it
has expired (the holder stopped renewing: crashed, killed or cut off) or when the holder
ran on the same host and its process is gone (so a killed build can be rerun at once).
Object stores have no atomic create-if-absent through fsspec, so two builds racing for
a free lease could both think they won; each renewal therefore re-reads the lease and a
build that finds another token there stops (`LeaseLost`).

A lease file that cannot be parsed (damaged, or written by something else; raygram's
own writes are atomic) is taken over when it is provably stale: last written more than
`ttl` ago, which a live holder never lets happen (it rewrites the file every `ttl / 3`).
A younger one, or one whose age the backend does not report, is refused with
`StoreLocked` naming the command that deletes it. A holder that finds its own lease
unparseable at a renewal writes its record again.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import threading
import time
import uuid

from raygram.errors import LeaseLost, StoreLocked
from raygram.store.gram_store import LOCK_KEY

__all__ = ["LOCK_KEY", "BuildLease", "process_alive", "parse_record", "delete_command"]

# field -> accepted types of a lease record
_FIELDS = {"host": (str,), "pid": (int,), "token": (str,), "expires": (int, float)}


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_record(raw: bytes) -> dict:
    """A lease record from the bytes of a lease file.

    Args:
      raw: the file's content.

    Returns:
      The record: a dict with at least "host" (str), "pid" (int), "token" (str) and
      "expires" (POSIX seconds).

    Raises:
      ValueError: the bytes are not such a record (the message says why).
    """
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    wrong = [name for name, types in _FIELDS.items() if not isinstance(record.get(name), types)]
    if wrong:
        raise ValueError(f"field(s) {wrong} missing or mistyped")
    return record


def delete_command(store) -> str:
    """A shell command that deletes the store's lease file."""
    where = store.location(LOCK_KEY)
    if "://" not in where:
        return f"rm {shlex.quote(where)}"
    if where.startswith("s3://"):
        endpoint = store.storage_options.get("endpoint_url") or store.storage_options.get(
            "client_kwargs", {}).get("endpoint_url")
        return f"aws s3 rm {where}" + (f" --endpoint-url {endpoint}" if endpoint else "")
    return f"delete the object {where}"


class BuildLease:
    """Context manager holding the lease of a `GramStore` for one build.

    Args:
      store: the `GramStore` the build writes.
      ttl: seconds the lease lives without a renewal.
    """

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
        """The current lease record, or None when the store is free.

        Raises:
          StoreLocked: the lease file cannot be parsed (the message names the command
            that deletes it).
        """
        raw = self.store.get_bytes(LOCK_KEY)
        if raw is None:
            return None
        try:
            return parse_record(raw)
        except ValueError as e:
            raise StoreLocked(
                f"the build lease {self.store.location(LOCK_KEY)} cannot be read ({e}); it is taken over once it "
                f"is {self.ttl:.0f} s old, or, if no build is writing {self.store.url}, delete it now: "
                f"{delete_command(self.store)}") from None

    @staticmethod
    def stale(record: dict) -> bool:
        """Whether a lease record's holder has stopped: expired, or a dead process of this host."""
        if record["expires"] < time.time():
            return True
        return record["host"] == socket.gethostname() and not process_alive(record["pid"])

    def _unreadable_is_stale(self) -> bool:
        """Whether an unparseable lease file was last written more than `ttl` ago."""
        written = self.store.modified(LOCK_KEY)
        return written is not None and time.time() - written > self.ttl

    def check_free(self) -> dict | None:
        """Raise `StoreLocked` if a live build holds the lease, or if an unparseable lease file
        is not provably stale; else the stale record (or None when free).

        Returns:
          None when no lease file exists; the stale record otherwise ({"unreadable":
          reason} for a stale file that cannot be parsed).
        """
        try:
            holder = self.holder()
        except StoreLocked as e:
            if not self._unreadable_is_stale():
                raise
            return {"unreadable": str(e)}
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
                try:
                    holder = self.holder()
                except StoreLocked:  # our own lease, damaged: write it again
                    holder = {"token": self.token}
                if holder is None or holder["token"] != self.token:
                    self.lost.set()
                    return
                self.store.set_bytes(LOCK_KEY, self._record())
            except Exception:  # a transient store error: try again at the next renewal
                continue

    def check(self) -> None:
        """Raise `LeaseLost` if the lease was taken over (the build must stop)."""
        if self.lost.is_set():
            raise LeaseLost(f"the lease of {self.store.url} was taken over by another build; "
                            "this build stopped so that the two do not interleave")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (never another's, nor an unreadable one)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            holder = self.holder()
        except StoreLocked:
            return
        if holder is not None and holder["token"] == self.token:
            self.store.delete_key(LOCK_KEY)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
