"""BuildLease on a local store: exclusive, renewed, taken over when stale, never deleted for another."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from raygram.build.lease import LOCK_KEY, BuildLease, delete_command, process_alive
from raygram.errors import LeaseLost, StoreError, StoreLocked
from raygram.store.gram_store import GramStore


@pytest.fixture
def store(tmp_path):
    return GramStore(tmp_path / "g")


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process of this host that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    pid = int(child.stdout)
    assert not process_alive(pid)
    return pid


def read_lock(store):
    raw = store.get_bytes(LOCK_KEY)
    return None if raw is None else json.loads(raw)


def write_lock(store, **record):
    store.set_bytes(LOCK_KEY, json.dumps(record).encode())


def wait_for(condition, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_process_alive(dead_pid):
    assert process_alive(os.getpid())
    assert process_alive(1)  # init: exists, possibly not ours to signal
    assert not process_alive(dead_pid)


def test_acquire_writes_the_record_and_release_removes_it(store):
    lease = BuildLease(store, ttl=30)
    assert lease.holder() is None
    before = time.time()
    lease.acquire()
    try:
        record = read_lock(store)
        assert record["token"] == lease.token and record["pid"] == os.getpid()
        assert record["host"] == socket.gethostname()
        assert before <= record["acquired"] <= time.time()
        assert record["expires"] == pytest.approx(record["acquired"] + 30)
        assert lease.holder() == record
        lease.check()  # not lost
    finally:
        lease.release()
    assert read_lock(store) is None and lease.holder() is None


def test_context_manager_releases_on_error(store):
    with pytest.raises(RuntimeError, match="inside"):
        with BuildLease(store) as lease:
            assert read_lock(store)["token"] == lease.token
            raise RuntimeError("inside")
    assert read_lock(store) is None


def test_second_lease_is_refused_while_the_first_is_live(store):
    with BuildLease(store, ttl=30) as first:
        second = BuildLease(store, ttl=30)
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()} on host {socket.gethostname()}") as caught:
            second.acquire()
        assert isinstance(caught.value, StoreError)
        with pytest.raises(StoreLocked):
            second.check_free()
        assert read_lock(store)["token"] == first.token  # the refused build wrote nothing
        second.release()  # releasing a lease never held leaves the holder's alone
        assert read_lock(store)["token"] == first.token
    # Once released, the store can be leased again.
    with BuildLease(store) as third:
        assert read_lock(store)["token"] == third.token


def test_live_lease_of_another_host_is_respected_whatever_its_pid(store, dead_pid):
    now = time.time()
    write_lock(store, host=socket.gethostname() + "-elsewhere", pid=dead_pid, token="remote",
               acquired=now, expires=now + 60)
    with pytest.raises(StoreLocked, match="-elsewhere"):
        BuildLease(store).acquire()
    assert read_lock(store)["token"] == "remote"


def test_lease_of_a_dead_process_on_this_host_is_taken_over(store, dead_pid):
    now = time.time()
    write_lock(store, host=socket.gethostname(), pid=dead_pid, token="dead", acquired=now, expires=now + 3600)
    lease = BuildLease(store)
    assert lease.check_free()["token"] == "dead"  # stale: returned, not refused
    with lease:
        assert read_lock(store)["token"] == lease.token
    assert read_lock(store) is None


def test_expired_lease_is_taken_over(store):
    now = time.time()
    write_lock(store, host=socket.gethostname() + "-elsewhere", pid=os.getpid(), token="expired",
               acquired=now - 120, expires=now - 60)
    with BuildLease(store) as lease:
        assert read_lock(store)["token"] == lease.token


def test_stale(dead_pid):
    now, host = time.time(), socket.gethostname()
    live = {"host": host, "pid": os.getpid(), "expires": now + 60}
    assert not BuildLease.stale(live)
    assert BuildLease.stale(dict(live, expires=now - 1))
    assert BuildLease.stale(dict(live, pid=dead_pid))
    assert not BuildLease.stale(dict(live, host=host + "-elsewhere", pid=dead_pid))


def test_renewal_keeps_a_short_lease_live(store):
    with BuildLease(store, ttl=1.0) as lease:
        first = read_lock(store)["expires"]
        time.sleep(2.5)  # more than twice the ttl: without renewals (every ttl / 3) it would have expired
        record = read_lock(store)
        assert record["token"] == lease.token and record["expires"] > first
        assert not BuildLease.stale(record)
        with pytest.raises(StoreLocked):
            BuildLease(store).acquire()
        lease.check()


def test_lease_lost_when_the_token_changes_and_the_other_holder_is_kept(store):
    lease = BuildLease(store, ttl=0.3)
    lease.acquire()
    try:
        lease.check()
        write_lock(store, **dict(read_lock(store), token="other"))
        assert wait_for(lease.lost.is_set), "the renewal did not notice the new token"
        with pytest.raises(LeaseLost, match="taken over by another build"):
            lease.check()
        time.sleep(0.3)  # the renewal thread has stopped: it does not overwrite the other's record
        assert read_lock(store)["token"] == "other"
    finally:
        lease.release()
    assert read_lock(store)["token"] == "other"  # release does not delete another holder's lease


def test_lease_lost_when_the_record_disappears(store):
    lease = BuildLease(store, ttl=0.3)
    lease.acquire()
    try:
        store.delete_key(LOCK_KEY)
        assert wait_for(lease.lost.is_set)
        with pytest.raises(LeaseLost):
            lease.check()
    finally:
        lease.release()
    assert read_lock(store) is None


@pytest.mark.parametrize("content, why", [
    (b'{"host": "a", "pid"', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "a JSON list, not an object"),
    (b'{"host": "a", "pid": "12", "token": "t", "expires": 1e12}', r"field\(s\) \['pid'\] missing or mistyped"),
    (b"{}", r"field\(s\) \['host', 'pid', 'token', 'expires'\]"),
])
def test_unparseable_young_lease_is_refused_with_the_command_that_clears_it(store, content, why):
    store.set_bytes(LOCK_KEY, content)
    lease = BuildLease(store, ttl=60)
    for attempt in (lease.check_free, lease.acquire, lease.holder):
        with pytest.raises(StoreLocked, match=why) as caught:
            attempt()
        message = str(caught.value)
        assert len(message.splitlines()) == 1
        assert f"rm {store.location(LOCK_KEY)}" in message and "taken over once it is 60 s old" in message
    assert store.get_bytes(LOCK_KEY) == content  # nothing changed
    # The command in the message clears it.
    command = message.rsplit(": ", 1)[1]
    subprocess.run(command, shell=True, check=True)
    with BuildLease(store) as lease:
        assert read_lock(store)["token"] == lease.token


def test_unparseable_lease_older_than_the_ttl_is_taken_over(store):
    store.set_bytes(LOCK_KEY, b"garbage")
    path = store.location(LOCK_KEY)
    old = time.time() - 120
    os.utime(path, (old, old))
    assert store.modified(LOCK_KEY) == pytest.approx(old)
    with pytest.raises(StoreLocked):  # 120 s old but the ttl is 300 s: not provably stale
        BuildLease(store, ttl=300).acquire()
    lease = BuildLease(store, ttl=60)
    assert "cannot be read" in lease.check_free()["unreadable"]
    with lease:
        assert read_lock(store)["token"] == lease.token
    assert read_lock(store) is None


def test_holder_rewrites_its_own_damaged_lease_and_release_leaves_a_foreign_one(store):
    lease = BuildLease(store, ttl=0.3)
    lease.acquire()
    try:
        store.set_bytes(LOCK_KEY, b"damaged")
        assert wait_for(lambda: store.get_bytes(LOCK_KEY) != b"damaged"), "the renewal did not repair it"
        assert read_lock(store)["token"] == lease.token and not lease.lost.is_set()
        lease._stop.set()
        lease._thread.join()
        store.set_bytes(LOCK_KEY, b"damaged again")
    finally:
        lease.release()
    assert store.get_bytes(LOCK_KEY) == b"damaged again"  # unreadable: not provably ours, left alone


def test_delete_command_for_object_stores():
    store = GramStore("s3://bucket/gram", storage_options={"endpoint_url": "http://127.0.0.1:9"})  # no traffic
    assert delete_command(store) == "aws s3 rm s3://bucket/gram/raygram.lock --endpoint-url http://127.0.0.1:9"
