"""HEP's SDP offers shared by the workers (stird.adapters.hep_shared): two attachments of
the same files stand for two workers; one test uses a real second process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stird.adapters import hep_shared
from stird.adapters.hep import MAX_SDP, HepCollector
from stird.adapters.hep_shared import (
    OfferLog,
    SharedDigests,
    SharedSdpStore,
    attach_shared,
    create_shared,
)
from stird.adapters.sockets import udp_reserved, udp_twin
from tests.adapters.test_agi import make_api

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"

Pair = tuple[tuple[SharedSdpStore, SharedDigests], tuple[SharedSdpStore, SharedDigests]]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Pair]:
    """Two workers' views of one set of files (max 8 calls, a 64 KiB log)."""
    create_shared(tmp_path / "hep", max_calls=8, max_bytes=64 << 10, digests=16)
    a, b = attach_shared(tmp_path / "hep"), attach_shared(tmp_path / "hep")
    yield a, b
    for store, digests in (a, b):
        store.close()
        digests.close()


def test_an_offer_stored_by_one_worker_is_found_by_the_other(workers: Pair) -> None:
    (a, _), (b, _) = workers
    a.put_offer("call-1@host", SDP, "caller-tag")
    assert b.offer("call-1@host") == SDP
    assert b.caller_tag("call-1@host") == "caller-tag"
    assert b.offer("call-2@host") is None and b.caller_tag("call-2@host") is None
    b.put_offer("call-3@host", SDP, None)
    assert a.offer("call-3@host") == SDP and a.caller_tag("call-3@host") is None


def test_the_first_offer_wins_across_workers(workers: Pair) -> None:
    (a, _), (b, _) = workers
    a.put_offer("call@host", SDP, "t1")
    b.put_offer("call@host", SDP.replace("127.0.0.1", "10.6.6.6"), "t2")  # a forged copy
    assert a.offer("call@host") == SDP and b.caller_tag("call@host") == "t1"


async def test_a_waiter_on_one_worker_is_woken_by_the_others_copy(workers: Pair) -> None:
    (a, _), (b, _) = workers
    waiting = asyncio.create_task(b.wait_offer("late@host", 5.0))
    deadline = time.monotonic() + 5
    while not b._waiters:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    a.put_offer("other@host", SDP, None)  # a record for nobody waiting, then the one
    a.put_offer("late@host", SDP, None)
    assert await asyncio.wait_for(waiting, 5) == SDP
    assert await b.wait_offer("never@host", 0.01) is None  # bounded: hep_wait


async def test_waiters_are_bounded(workers: Pair) -> None:
    (_, _), (b, _) = workers
    b.max_waiters = 2
    held = [asyncio.create_task(b.wait_offer(f"w{n}", 5.0)) for n in range(2)]
    await asyncio.sleep(0.01)
    assert await b.wait_offer("third", 5.0) is None  # at once, not after 5 s
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


def test_oversize_and_overlong_are_refused(workers: Pair) -> None:
    (a, _), (b, _) = workers
    a.put_offer("big@host", "x" * (MAX_SDP + 1), None)
    a.put_offer("wide@host", "é" * (MAX_SDP // 2 + 1), None)  # few characters, many bytes
    a.put_offer("c" * (hep_shared.MAX_CALL_ID + 1), SDP, None)
    assert b.offer("big@host") is None and b.offer("wide@host") is None
    assert len(b) == 0
    a.put_offer("long-tag@host", SDP, "t" * (hep_shared.MAX_TAG + 1))  # kept, without tag
    assert b.offer("long-tag@host") == SDP and b.caller_tag("long-tag@host") is None


def test_a_flood_of_call_ids_stays_within_calls_and_bytes(workers: Pair) -> None:
    (a, _), (b, _) = workers
    size = os.path.getsize(a.log.path)
    body = "a=x:" + "y" * 3000 + "\r\n"
    for n in range(200):  # 600 KB into a 64 KiB log and an 8-call index
        a.put_offer(f"flood-{n}@host", body, None)
        assert len(b) <= 8
    assert os.path.getsize(a.log.path) == size
    assert b.offer("flood-199@host") == body  # the newest are there
    assert b.offer("flood-0@host") is None  # the oldest are gone (calls and bytes)
    found = [n for n in range(200) if b.offer(f"flood-{n}@host") is not None]
    assert 0 < len(found) <= 8 and all(n >= 180 for n in found)


def test_records_across_the_end_of_the_ring_read_back(tmp_path: Path) -> None:
    log = OfferLog.create(tmp_path / "log", 20000)
    try:
        data = bytes(range(256)) * 20
        with log.locked():
            log.write(19000, data)  # wraps: 1000 bytes at the end, the rest at the start
            assert log.read(19000, len(data)) == data
            log.publish(19000 + len(data))
            assert log.intact(19000, len(data))
            assert not log.intact(19000 + len(data) - 20001, 10)  # written over
    finally:
        log.close()
    with pytest.raises(ValueError, match="one offer of every bound"):
        OfferLog.create(tmp_path / "tiny", 1000)
    (tmp_path / "junk").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not a stird HEP offer log"):
        OfferLog(tmp_path / "junk")


def test_a_lagging_poll_looks_every_waiter_up(workers: Pair) -> None:
    """More than the log's size appended since the poll's last look: it cannot walk the
    records, so it asks the index for every waited Call-ID."""
    (a, _), (b, _) = workers
    b._waiters["w@host"] = []
    b._seen = 0
    for n in range(30):
        a.put_offer(f"f{n}@host", "a=x:" + "y" * 3000, None)
    assert b._new_offers() == ["w@host"]
    assert b._new_offers() == []  # caught up
    b._waiters.clear()


def test_retransmissions_are_dropped_across_workers(workers: Pair) -> None:
    (_, a), (_, b) = workers
    assert a.first(b"digest-1") is True
    assert b.first(b"digest-1") is False and a.first(b"digest-1") is False
    assert b.first(b"digest-2") is True


CHILD = """
import sys
from pathlib import Path
from stird.adapters.hep_shared import attach_shared
store, digests = attach_shared(Path(sys.argv[1]))
store.put_offer("child@host", "v=0\\r\\n", "child-tag")
print(digests.first(b"from-the-child"))
"""


async def test_another_process_stores_what_this_one_waits_for(workers: Pair) -> None:
    (a, digests), _ = workers
    waiting = asyncio.create_task(a.wait_offer("child@host", 10.0))
    await asyncio.sleep(0.01)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(a.log.path.parent), env=env,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == 0 and out.strip() == b"True"
    assert await asyncio.wait_for(waiting, 10) == "v=0\r\n"
    assert a.caller_tag("child@host") == "child-tag"
    assert digests.first(b"from-the-child") is False


def test_the_udp_reservation_receives_nothing() -> None:
    reserved = udp_reserved("127.0.0.1", 0)
    mine = [udp_twin(reserved) for _ in range(2)]
    senders = [socket.socket(type=socket.SOCK_DGRAM) for _ in range(64)]
    try:
        address = reserved.getsockname()
        assert all(sock.getsockname() == address for sock in mine)
        for sender in senders:
            sender.sendto(b"x", address)
        got = [0, 0]
        deadline = time.monotonic() + 5
        while sum(got) < 64:
            assert time.monotonic() < deadline, got
            for i, sock in enumerate(mine):
                try:
                    sock.recv(16)
                    got[i] += 1
                except BlockingIOError:
                    time.sleep(0.001)
        with pytest.raises(BlockingIOError):
            reserved.recv(16)
        assert min(got) > 0, got  # every flow on one socket: odds about 2 ** -30
    finally:
        for sock in [reserved, *mine, *senders]:
            sock.close()


def test_the_collector_keeps_an_empty_shared_store(workers: Pair, tmp_path: Path) -> None:
    """An empty store has len() 0: the collector must not take it for "no store" (it did,
    and each worker kept its copies to itself)."""
    (store, digests), _ = workers
    collector = HepCollector(make_api(tmp_path), store=store, digests=digests)
    assert collector.store is store and collector.digests is digests


# --- hostile: bytes written into the ring but never published (issue #18 review) ---------

_MIN_LOG = hep_shared._RECORD.size + hep_shared.MAX_CALL_ID + hep_shared.MAX_TAG + MAX_SDP
_EVIL = "v=0\r\nc=IN IP4 10.6.6.6\r\n"


def _forged_sdp() -> str:
    """An SDP whose first bytes are a whole record of its own, for ``victim@host``: read
    from where the ring's oldest record starts, it would pass for that record."""
    inner = b"victim@host" + _EVIL.encode()
    header = hep_shared._RECORD.pack(len(b"victim@host"), 0, len(_EVIL))
    return (header + inner).decode() + "a=pad:" + "p" * 64 + "\r\n"


def _fill_to(store: SharedSdpStore, head: int) -> None:
    """Filler offers until the log's head is exactly ``head``."""
    n = 0
    while (gap := head - store.log.head) > 0:
        call_id = f"fill{n}@host"
        n += 1
        room = gap - hep_shared._RECORD.size - len(call_id)
        assert room > 0
        store.put_offer(call_id, "s" * min(room, MAX_SDP), None)
    assert store.log.head == head


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Pair]:
    """Two workers over the smallest log: the oldest record is the next one written over."""
    create_shared(tmp_path / "hep", max_calls=64, max_bytes=_MIN_LOG, digests=16)
    a, b = attach_shared(tmp_path / "hep"), attach_shared(tmp_path / "hep")
    yield a, b
    for store, digests in (a, b):
        store.close()
        digests.close()


def test_bytes_written_but_never_published_are_not_read_as_an_older_record(
    tight: Pair,
) -> None:
    """A worker killed between writing a record and publishing it (or one that lost the
    race for its Call-ID) has overwritten the oldest bytes of the ring: the records there
    are gone, never read as the new bytes."""
    (a, _), (b, _) = tight
    a.put_offer("victim@host", SDP, "victim-tag")  # position 0
    head = a.log.size - (hep_shared._RECORD.size + len("x@host"))
    _fill_to(a, head)
    assert b.offer("victim@host") == SDP  # still intact: head - 0 <= size
    record = hep_shared._RECORD.pack(len("x@host"), 0, len(_forged_sdp().encode()))
    record += b"x@host" + _forged_sdp().encode()
    with b.log.locked():
        b.log.write(head, record)  # ... and the worker dies here: never published
    assert a.offer("victim@host") is None
    assert a.caller_tag("victim@host") is None


def test_a_lost_race_leaves_the_ring_as_it_was(
    tight: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both workers looked ``race@host`` up before either stored it: the loser writes
    nothing, so the oldest record (which its bytes would have covered) still reads back."""
    (a, _), (b, _) = tight
    a.put_offer("race@host", SDP, None)  # the winner
    victim_at = a.log.head
    a.put_offer("victim@host", SDP, "victim-tag")
    _fill_to(a, victim_at + a.log.size - (hep_shared._RECORD.size + len("race@host")))
    assert a.offer("victim@host") == SDP
    monkeypatch.setattr(b.index, "get_now", lambda key: None)  # looked before a stored
    b.put_offer("race@host", _forged_sdp(), None)  # the loser
    monkeypatch.undo()
    assert a.offer("race@host") is None  # the winner's record: written over by the filler
    assert a.offer("victim@host") == SDP and a.caller_tag("victim@host") == "victim-tag"
