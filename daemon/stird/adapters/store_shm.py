"""A :class:`~stird.services.ports.KeyValueStore` shared by the worker processes of one
host: a fixed-size hash table in a memory-mapped file (``/dev/shm``), no round trip.

The supervisor creates the file (:meth:`ShmStore.create`); each worker maps it
(:meth:`ShmStore.attach`). Every operation holds an exclusive ``fcntl`` record lock on
the file for the few microseconds it touches the table; the kernel releases it if the
process dies, so a killed worker cannot wedge the others.

Layout: a 64-byte header, then ``slots`` fixed-size slots (open addressing, linear
probing, deletion by backward shift: no tombstones, so a probe ends at the first empty
slot). A slot holds its expiry (seconds, a float; 0.0 = empty), a 128-bit keyed BLAKE2b
digest of the key (the salt is random per table, so a peer cannot aim keys at one probe
chain) and the value (at most ``value_size`` bytes). ``slots`` is twice ``max_entries``,
so chains stay short. Expired entries are dropped when met, a few per write by a sweeping
cursor, and all of them when a non-evicting table looks full (an evicting one, always full
under a steady flow of new keys, sweeps ``_EVICT_SWEEP`` slots on and then evicts: a
whole sweep per write cost 1–3 ms on an 8,193-slot table).

Full: with ``evict=False`` (the replay cache: an evicted entry is a replay accepted), a new
key raises :class:`StoreFull` and stores nothing, like ``MemoryStore(evict=False)``; with
``evict=True`` the soonest-expiring of a sample of entries makes room. A value longer than
``value_size`` cannot be stored either: :class:`StoreFull` (callers treat it as "no
room", e.g. a pin not recorded).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import mmap
import os
import secrets
import struct
from pathlib import Path

from stird.services.ports import Clock, system_clock
from stird.services.stores import StoreFull

MIN_TTL = 0.001  # as MemoryStore and Redis PX
_MAGIC = b"STIRSHM1"
_HEADER = struct.Struct("<8sIIIBxxxII16s")  # magic slots max value_size evict used cursor salt
_HEADER_SIZE = 64
_USED_AT = 24  # offset of ``used`` in the header (after magic, slots, max, value_size, evict)
_SLOT_HEAD = struct.Struct("<d16sH")  # expiry, digest, value length
_SWEEP = 4  # slots the cursor checks per write
_SAMPLE = 16  # entries compared when evicting
_EVICT_SWEEP = 16  # slots an evicting table sweeps to make room (the cursor goes around)


def map_shared(path: Path) -> tuple[int, mmap.mmap]:
    """``path`` opened read-write and mapped whole (the descriptor stays open for the
    ``fcntl`` locks); nothing is left open if the mapping fails."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fd, mmap.mmap(fd, 0)
    except (OSError, ValueError):
        os.close(fd)
        raise


def _slot_size(value_size: int) -> int:
    return (_SLOT_HEAD.size + value_size + 7) // 8 * 8


class ShmStore:
    """A bounded key-value table with TTLs, shared by processes that map the same file."""

    def __init__(self, path: Path, clock: Clock = system_clock) -> None:
        self.path = path
        self._clock = clock
        self._fd, self._map = map_shared(path)
        magic, slots, max_entries, value_size, evict, _, _, salt = _HEADER.unpack_from(self._map)
        if magic != _MAGIC:
            self.close()
            raise ValueError(f"{path}: not a stird shared table")
        self.slots, self.max_entries, self.value_size = slots, max_entries, value_size
        self._evict = bool(evict)
        self._salt = salt
        self._size = _slot_size(value_size)

    # ---------------------------------------------------------------- lifecycle ----

    @classmethod
    def create(
        cls,
        path: Path,
        max_entries: int,
        *,
        value_size: int = 16,
        evict: bool = False,
        clock: Clock = system_clock,
    ) -> ShmStore:
        """A new empty table at ``path`` (replacing any file there)."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0 < value_size < 65536:
            raise ValueError("value_size must be 1..65535")
        slots = 2 * max_entries + 1
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, _HEADER_SIZE + slots * _slot_size(value_size))  # zeros: empty
            header = _HEADER.pack(
                _MAGIC, slots, max_entries, value_size, evict, 0, 0, secrets.token_bytes(16)
            )
            os.pwrite(fd, header, 0)
        finally:
            os.close(fd)
        partial.replace(path)
        return cls(path, clock)

    @classmethod
    def attach(cls, path: Path, clock: Clock = system_clock) -> ShmStore:
        return cls(path, clock)

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
            os.close(self._fd)

    def __bool__(self) -> bool:
        return True  # a store, even an empty one (``store or default`` must keep it)

    def __len__(self) -> int:
        """Live entries."""
        with _Locked(self._fd):
            now = self._clock()
            return sum(1 for i in range(self.slots) if self._expiry(i) > now)

    # --------------------------------------------------------- KeyValueStore ----

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._put(key, value, ttl, only_new=False)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        return self._put(key, value, ttl, only_new=True)

    async def delete(self, key: str) -> None:
        digest = self._digest(key)
        with _Locked(self._fd):
            index, found = self._find(digest)
            if found:
                self._remove(index)

    # the same without a coroutine, for callers that cannot await (a datagram callback)

    def get_now(self, key: str) -> bytes | None:
        digest = self._digest(key)
        with _Locked(self._fd):
            index, found = self._find(digest)
            if not found:
                return None
            if self._expiry(index) <= self._clock():
                self._remove(index)
                return None
            return self._value(index)

    def add_now(self, key: str, value: bytes, ttl: float) -> bool:
        """:meth:`add` without a coroutine."""
        return self._put(key, value, ttl, only_new=True)

    def set_now(self, key: str, value: bytes, ttl: float) -> None:
        """:meth:`set` without a coroutine."""
        self._put(key, value, ttl, only_new=False)

    # ------------------------------------------------------------ the table ----

    def _digest(self, key: str) -> bytes:
        return hashlib.blake2b(key.encode(), digest_size=16, key=self._salt).digest()

    def _put(self, key: str, value: bytes, ttl: float, *, only_new: bool) -> bool:
        if len(value) > self.value_size:
            raise StoreFull(f"a value of {len(value)} bytes (slots hold {self.value_size})")
        digest = self._digest(key)
        with _Locked(self._fd):
            now = self._clock()
            index, found = self._find(digest)
            if found and only_new and self._expiry(index) > now:
                return False
            if not found:
                self._sweep(now, _SWEEP)
                if self._used() >= self.max_entries:
                    self._make_room(now)
                index, _ = self._find(digest)  # the sweep may have moved entries
                self._set_used(self._used() + 1)
            self._write(index, now + max(ttl, MIN_TTL), digest, value)
            return True

    def _make_room(self, now: float) -> None:
        self._sweep(now, _EVICT_SWEEP if self._evict else self.slots)
        if self._used() < self.max_entries:
            return
        if not self._evict:
            raise StoreFull(f"{self.max_entries} live entries")
        cursor, n = self._cursor(), self.slots
        occupied = (i for i in ((cursor + k) % n for k in range(n)) if self._expiry(i) > 0.0)
        self._remove(min(itertools.islice(occupied, _SAMPLE), key=self._expiry))

    def _find(self, digest: bytes) -> tuple[int, bool]:
        """The slot holding ``digest``, or the empty slot that ends its probe chain."""
        index = int.from_bytes(digest[:8], "little") % self.slots
        while True:
            expiry, stored, _ = _SLOT_HEAD.unpack_from(self._map, self._offset(index))
            if expiry == 0.0:
                return index, False
            if stored == digest:
                return index, True
            index = (index + 1) % self.slots

    def _sweep(self, now: float, steps: int) -> None:
        """Drop expired entries at the cursor, ``steps`` slots on."""
        cursor = self._cursor()
        for _ in range(steps):
            expiry = self._expiry(cursor)
            if 0.0 < expiry <= now:
                self._remove(cursor)  # a later entry may shift here: look again
                if self._expiry(cursor) == 0.0:
                    cursor = (cursor + 1) % self.slots
            else:
                cursor = (cursor + 1) % self.slots
        self._set_cursor(cursor)

    def _remove(self, hole: int) -> None:
        """Empty slot ``hole``, shifting later entries of the chain back (linear probing
        without tombstones)."""
        n = self.slots
        probe = hole
        while True:
            probe = (probe + 1) % n
            offset = self._offset(probe)
            expiry, digest, _ = _SLOT_HEAD.unpack_from(self._map, offset)
            if expiry == 0.0:
                break
            home = int.from_bytes(digest[:8], "little") % n
            # the entry stays if its home lies cyclically in (hole, probe]
            if (hole < home <= probe) if hole <= probe else (home > hole or home <= probe):
                continue
            start = self._offset(hole)
            self._map[start : start + self._size] = self._map[offset : offset + self._size]
            hole = probe
        start = self._offset(hole)
        self._map[start : start + _SLOT_HEAD.size] = bytes(_SLOT_HEAD.size)
        self._set_used(self._used() - 1)

    def _offset(self, index: int) -> int:
        return _HEADER_SIZE + index * self._size

    def _expiry(self, index: int) -> float:
        return float(struct.unpack_from("<d", self._map, self._offset(index))[0])

    def _value(self, index: int) -> bytes:
        offset = self._offset(index)
        length = _SLOT_HEAD.unpack_from(self._map, offset)[2]
        start = offset + _SLOT_HEAD.size
        return bytes(self._map[start : start + length])

    def _write(self, index: int, expiry: float, digest: bytes, value: bytes) -> None:
        offset = self._offset(index)
        _SLOT_HEAD.pack_into(self._map, offset, expiry, digest, len(value))
        start = offset + _SLOT_HEAD.size
        self._map[start : start + len(value)] = value

    def _used(self) -> int:
        return int(struct.unpack_from("<I", self._map, _USED_AT)[0])

    def _set_used(self, used: int) -> None:
        struct.pack_into("<I", self._map, _USED_AT, used)

    def _cursor(self) -> int:
        return int(struct.unpack_from("<I", self._map, _USED_AT + 4)[0])

    def _set_cursor(self, cursor: int) -> None:
        struct.pack_into("<I", self._map, _USED_AT + 4, cursor)


class _Locked:
    """An exclusive ``fcntl`` record lock on the whole file (per process: a forked child
    does not share its parent's lock)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


__all__ = ["ShmStore"]
