"""The HEP collector's SDP offers shared by the worker processes of one host
(``[server] workers`` with ``[asterisk] hep``).

Every worker runs the collector on the same UDP port (``SO_REUSEPORT``,
stird.adapters.sockets.udp_twin); whichever receives a copy stores its offer here, and the
FastAGI verify session, on whichever worker Asterisk's connection landed, finds it here.
Two files in the supervisor's private directory (stird.wiring.workers), mapped by every
worker:

* the **log** (:class:`OfferLog`): a ring of ``max_bytes`` bytes to which each offer is
  appended as one record (Call-ID, the caller's From tag, the SDP), behind a header
  holding the total count of bytes ever appended (``head``). A record at position ``p``
  is intact while ``head - p <= max_bytes``: older ones have been written over, the
  oldest first — the byte bound of the in-process :class:`~stird.adapters.hep.SdpStore`.
  Beside ``head``, the header holds the end of the furthest bytes ever *written*
  (``reserved``, advanced before the bytes are): a record is intact only while
  ``reserved - p <= max_bytes`` too, so bytes written and never published (a worker killed
  between the two) are never read as the older record they covered. An ``fcntl`` lock on
  the file guards each append and read.
* the **index**: a :class:`~stird.adapters.store_shm.ShmStore` (``max_calls`` live
  entries, evicting, ``ttl`` seconds each) from the Call-ID to the record's position.
  The first offer of a Call-ID wins (``add``), as in one process. When it is full, the
  entry that expires soonest among a sample of 16 makes room (one process drops exactly
  the oldest).

An offer is added to the index (at the position it will take), then written to the log,
then published (``head`` advanced), all under the log's lock: a record another process
sees in the log is in the index already, and one that lost the race for its Call-ID is
never written (its bytes would cover the oldest record, still published).

**Waiting.** A verify session whose offer is not there yet waits on a future, as in one
process; the worker that stores the offer wakes its own waiters at once, and each worker
with waiters runs one poll task (not one per session) that every ``POLL`` seconds reads
the records appended since its last look (their Call-IDs: the cost follows the rate of
offers, not the number of waiters) and wakes the waiters of those it finds. A session
waits at most ``hep_wait`` and at most ``max_waiters`` sessions wait per worker, as
before; a copy that lands on another worker is seen within ``POLL`` (2 ms) of its
arrival. One process keeps :class:`~stird.adapters.hep.SdpStore` (no file, no poll): the
shared store's future path is the same, and its poll costs a lock and a read per tick
only while sessions wait.

Retransmissions are dropped across workers too (:class:`SharedDigests`, a ShmStore of
the digests seen in the last ``DIGEST_TTL`` seconds, evicting the soonest-expiring).

The collector's connected-identity bookkeeping, which only msec dialog tracking
(``[dialog] policy``) uses, is shared too (:class:`SharedDialogBook`): the FastAGI sign
session that expects an Identity value to leave Asterisk runs on whichever worker
Asterisk's connection landed, while one worker takes every HEP copy (Asterisk sends them
from one socket). Two ShmStore tables, evicting the soonest-expiring when full (one
process drops exactly the oldest): the expected values (``max_expected`` entries,
``expect_ttl`` seconds each; the key is the Identity value's PASSporT, the value the
channel's name) and the callers' From tags by Call-ID (``max_expected`` entries, kept
``TAG_TTL``: the bound is their count, as in one process). A value looked up is kept
(a challenged INVITE is sent again with the same Identity).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from stird.adapters.hep import MAX_SDP, OfferWaits
from stird.adapters.store_shm import ShmStore, map_shared

log = logging.getLogger(__name__)

POLL = 0.002  # s between two looks at the log while sessions wait
MAX_CALL_ID = 1024  # bytes of a Call-ID kept (a longer one: the offer is not stored)
MAX_TAG = 256  # bytes of a From tag kept (a longer one is not kept)
DIGEST_TTL = 32.0  # s a digest is remembered: SIP's Timer B/F, when retransmissions stop
MAX_CHANNEL = 256  # bytes of an Asterisk channel name kept (a longer one: not expected)
TAG_TTL = 86400.0  # s a tracked dialog's caller tag is kept at most (the count bounds them)
INDEX_VALUE = struct.Struct("<Q")  # the record's position in the log
_MAGIC = b"STIRHEP1"
_HEADER = struct.Struct("<8sQQ")  # magic, size, head
_HEADER_SIZE = 64
_HEAD_AT = 16
_RESERVED_AT = 24  # the end of the furthest bytes written (zero in a new file)
_RECORD = struct.Struct("<HHH")  # Call-ID, From tag and SDP lengths


class OfferLog:
    """The ring of offer records (see the module's docstring), mapped from ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd, self._map = map_shared(path)
        magic, size, _ = _HEADER.unpack_from(self._map)
        if magic != _MAGIC or len(self._map) != _HEADER_SIZE + size:
            self.close()
            raise ValueError(f"{path}: not a stird HEP offer log")
        self.size = int(size)

    @classmethod
    def create(cls, path: Path, size: int) -> OfferLog:
        if size < _RECORD.size + MAX_CALL_ID + MAX_TAG + MAX_SDP:
            raise ValueError("the offer log must hold one offer of every bound")
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, _HEADER_SIZE + size)
            os.pwrite(fd, _HEADER.pack(_MAGIC, size, 0), 0)
        finally:
            os.close(fd)
        partial.replace(path)
        return cls(path)

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
            os.close(self._fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # under locked() --------------------------------------------------------------------

    @property
    def head(self) -> int:
        return int(struct.unpack_from("<Q", self._map, _HEAD_AT)[0])

    @property
    def reserved(self) -> int:
        return int(struct.unpack_from("<Q", self._map, _RESERVED_AT)[0])

    def publish(self, head: int) -> None:
        struct.pack_into("<Q", self._map, _HEAD_AT, head)

    def write(self, position: int, data: bytes) -> None:
        """``data`` at ``position``; the records it covers stop being intact first (so a
        process killed while or after writing leaves nothing torn to read)."""
        end = position + len(data)
        if end > self.reserved:
            struct.pack_into("<Q", self._map, _RESERVED_AT, end)
        start = position % self.size
        first = min(len(data), self.size - start)
        base = _HEADER_SIZE
        self._map[base + start : base + start + first] = data[:first]
        if first < len(data):
            self._map[base : base + len(data) - first] = data[first:]

    def read(self, position: int, length: int) -> bytes:
        start = position % self.size
        first = min(length, self.size - start)
        base = _HEADER_SIZE
        data = bytes(self._map[base + start : base + start + first])
        if first < length:
            data += bytes(self._map[base : base + length - first])
        return data

    def intact(self, position: int, length: int) -> bool:
        """Whether the ``length`` bytes at ``position`` are published and not written
        over since."""
        head = self.head
        return position + length <= head and max(head, self.reserved) - position <= self.size

    def _frame(self, position: int) -> tuple[tuple[int, ...], int] | None:
        """The field lengths and total length of the record at ``position``, if intact."""
        if not self.intact(position, _RECORD.size):
            return None
        lengths = _RECORD.unpack(self.read(position, _RECORD.size))
        total = _RECORD.size + sum(lengths)
        return (lengths, total) if self.intact(position, total) else None

    def record(self, position: int) -> tuple[str, str, str, int] | None:
        """Call-ID, From tag, SDP and length of the record at ``position``, if intact."""
        frame = self._frame(position)
        if frame is None:
            return None
        lengths, total = frame
        body = self.read(position + _RECORD.size, total - _RECORD.size)
        call_id, tag = body[: lengths[0]], body[lengths[0] : lengths[0] + lengths[1]]
        sdp = body[lengths[0] + lengths[1] :]
        return call_id.decode(), tag.decode(), sdp.decode(), total

    def call_id_at(self, position: int) -> tuple[str, int] | None:
        """The Call-ID and length of the record at ``position`` (the poll's scan)."""
        frame = self._frame(position)
        if frame is None:
            return None
        lengths, total = frame
        return self.read(position + _RECORD.size, lengths[0]).decode(), total


class SharedSdpStore(OfferWaits):
    """:class:`~stird.adapters.hep.SdpStore`'s interface over the shared log and index."""

    def __init__(
        self, log_path: Path, index_path: Path, *, ttl: float = 5.0, max_waiters: int = 1024
    ) -> None:
        super().__init__(max_waiters)
        self.ttl = ttl
        self.log = OfferLog(log_path)
        try:
            self.index = ShmStore.attach(index_path)
        except BaseException:
            self.log.close()
            raise
        self._seen = 0  # the log's head at the poll's last look
        self._poll: asyncio.Task[None] | None = None

    @staticmethod
    def create(
        log_path: Path, index_path: Path, *, max_calls: int = 4096, max_bytes: int = 8 << 20
    ) -> None:
        """The two files (the supervisor, before the workers attach)."""
        OfferLog.create(log_path, max_bytes).close()
        ShmStore.create(index_path, max_calls, value_size=INDEX_VALUE.size, evict=True).close()

    def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        self.log.close()
        self.index.close()

    def __len__(self) -> int:
        return len(self.index)

    # --- the offers ----------------------------------------------------------------------

    def put_offer(self, call_id: str, sdp: str, from_tag: str | None) -> None:
        """The dialog-forming INVITE's SDP; the first one stored by any worker wins."""
        key, tag, body = call_id.encode(), (from_tag or "").encode(), sdp.encode()
        if len(sdp) > MAX_SDP or len(body) > MAX_SDP or len(key) > MAX_CALL_ID:
            return
        if len(tag) > MAX_TAG:
            tag = b""
        if self.index.get_now(call_id) is not None:
            return  # a retransmission or a later copy: nothing written
        record = _RECORD.pack(len(key), len(tag), len(body)) + key + tag + body
        with self.log.locked():
            position = self.log.head
            if not self.index.add_now(call_id, INDEX_VALUE.pack(position), self.ttl):
                return  # another worker stored this Call-ID meanwhile: its offer wins
            self.log.write(position, record)  # readers wait for the lock: none sees it half
            self.log.publish(position + len(record))
        self._wake(call_id, sdp)

    def _found(self, call_id: str) -> tuple[str, str] | None:
        value = self.index.get_now(call_id)
        if value is None or len(value) != INDEX_VALUE.size:
            return None
        (position,) = INDEX_VALUE.unpack(value)
        with self.log.locked():
            record = self.log.record(position)
        if record is None or record[0] != call_id:
            return None  # written over (the byte bound) or not published
        return record[2], record[1]

    def offer(self, call_id: str) -> str | None:
        found = self._found(call_id)
        return found[0] if found is not None else None

    def caller_tag(self, call_id: str) -> str | None:
        found = self._found(call_id)
        return (found[1] or None) if found is not None else None

    # --- waiting across processes --------------------------------------------------------

    def _watch(self, call_id: str) -> None:
        if self._poll is None or self._poll.done():
            with self.log.locked():
                self._seen = self.log.head
            self._poll = asyncio.get_running_loop().create_task(self._polling())
            sdp = self.offer(call_id)  # published by another worker since wait_offer looked
            if sdp is not None:
                self._wake(call_id, sdp)

    async def _polling(self) -> None:
        while self._waiters:
            await asyncio.sleep(POLL)
            try:
                for call_id in self._new_offers():
                    sdp = self.offer(call_id)
                    if sdp is not None:
                        self._wake(call_id, sdp)
            except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:
                log.warning("HEP: the shared offer log could not be read: %s", exc)

    def _new_offers(self) -> list[str]:
        """The waited-for Call-IDs among the records appended since the last look (all
        waited-for ones when the log has wrapped past the last look)."""
        found: list[str] = []
        with self.log.locked():
            head, position = self.log.head, self._seen
            self._seen = head
            if head - position > self.log.size:
                return list(self._waiters)
            while position < head:
                record = self.log.call_id_at(position)
                if record is None:
                    return list(self._waiters)
                if record[0] in self._waiters:
                    found.append(record[0])
                position += record[1]
        return found


class SharedDigests:
    """The digests of the SIP messages seen lately by any worker (a retransmission taken by
    another worker is a duplicate too)."""

    def __init__(self, path: Path) -> None:
        self.table = ShmStore.attach(path)

    @staticmethod
    def create(path: Path, limit: int = 16384) -> None:
        ShmStore.create(path, limit, value_size=1, evict=True).close()

    def first(self, digest: bytes) -> bool:
        return self.table.add_now(digest.hex(), b"", DIGEST_TTL)

    def close(self) -> None:
        self.table.close()


class SharedDialogBook:
    """:class:`~stird.adapters.hep.DialogBook` in two shared tables (see the module's
    docstring): an expected value or a caller's tag recorded by one worker is found by
    every other."""

    def __init__(self, expected_path: Path, callers_path: Path, *, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.tokens = ShmStore.attach(expected_path)
        try:
            self.callers = ShmStore.attach(callers_path)
        except BaseException:
            self.tokens.close()
            raise

    @staticmethod
    def create(expected_path: Path, callers_path: Path, *, max_expected: int = 4096) -> None:
        ShmStore.create(expected_path, max_expected, value_size=MAX_CHANNEL, evict=True).close()
        ShmStore.create(callers_path, max_expected, value_size=MAX_TAG, evict=True).close()

    def expect(self, token: str, channel: str) -> None:
        value = channel.encode()
        if len(value) <= MAX_CHANNEL:  # a longer name could not be hung up by it anyway
            self.tokens.set_now(token, value, self.ttl)

    def expected(self, token: str) -> str | None:
        value = self.tokens.get_now(token)  # kept: a challenged INVITE is sent again
        return value.decode(errors="replace") if value else None

    def remember_caller(self, call_id: str, tag: str) -> None:
        value = tag.encode()
        if len(value) <= MAX_TAG:  # a longer one is not kept (as the offers' tags)
            self.callers.set_now(call_id, value, TAG_TTL)

    def caller(self, call_id: str) -> str | None:
        value = self.callers.get_now(call_id)
        return value.decode(errors="replace") if value else None

    def close(self) -> None:
        self.tokens.close()
        self.callers.close()


def create_shared(
    directory: Path,
    *,
    max_calls: int = 4096,
    max_bytes: int = 8 << 20,
    digests: int = 16384,
    max_expected: int = 4096,
) -> None:
    """The shared files in ``directory`` (made here: the supervisor's private one)."""
    directory.mkdir(mode=0o700)
    SharedSdpStore.create(directory / "offers", directory / "index", max_calls=max_calls,
                          max_bytes=max_bytes)  # fmt: skip
    SharedDigests.create(directory / "digests", digests)
    SharedDialogBook.create(directory / "expected", directory / "callers",
                            max_expected=max_expected)  # fmt: skip


def attach_shared(directory: Path, *, ttl: float = 5.0) -> tuple[SharedSdpStore, SharedDigests]:
    """A worker's view of the offers and digests :func:`create_shared` made."""
    store = SharedSdpStore(directory / "offers", directory / "index", ttl=ttl)
    try:
        return store, SharedDigests(directory / "digests")
    except BaseException:
        store.close()
        raise


def attach_book(directory: Path, *, expect_ttl: float = 60.0) -> SharedDialogBook:
    """A worker's view of the connected-identity tables :func:`create_shared` made."""
    return SharedDialogBook(directory / "expected", directory / "callers", ttl=expect_ttl)


__all__ = [
    "OfferLog",
    "SharedDialogBook",
    "SharedDigests",
    "SharedSdpStore",
    "attach_book",
    "attach_shared",
    "create_shared",
]
