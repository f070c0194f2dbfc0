"""A :class:`~stird.services.ports.KeyValueStore` in one SQLite file the worker processes
of a host share (stird.adapters.sqlite_db): the embedded CPS's key directory, whose
values (signed key publications with their certificate chains) are too large and too
varied for the fixed slots of stird.adapters.store_shm.

Bounded like :class:`~stird.adapters.store_memory.MemoryStore`: at most ``max_entries``
live entries (a new key evicts the one that expires soonest) and values of at most
``max_value`` bytes (:class:`~stird.services.stores.StoreFull` beyond); and, as the file
lives in tmpfs (memory), at most ``max_bytes`` of values in all (the soonest-expiring
other entries go to make room). ``add`` is one
``BEGIN IMMEDIATE`` transaction, so it is atomic across processes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from stird.adapters import sqlite_db
from stird.services.ports import Clock, system_clock
from stird.services.stores import StoreFull

MIN_TTL = 0.001  # as MemoryStore and Redis PX
SCHEMA = """
CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expiry REAL NOT NULL)
    WITHOUT ROWID;
CREATE INDEX kv_by_expiry ON kv (expiry);
"""


class SqliteStore:
    def __init__(
        self,
        path: Path,
        max_entries: int = 100_000,
        *,
        max_value: int = 256 * 1024,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Clock = system_clock,
        timeout: float = sqlite_db.BUSY_TIMEOUT,
    ) -> None:
        if max_entries < 1 or max_value < 1 or max_bytes < max_value:
            raise ValueError("need max_entries, max_value >= 1 and max_bytes >= max_value")
        self.path, self._max, self._max_value, self._clock = path, max_entries, max_value, clock
        self._max_bytes = max_bytes
        with sqlite_db.failures("shared store"):
            self._db = sqlite_db.connect(path, timeout)
            self._db.execute("SELECT count(*) FROM kv").fetchone()  # damaged: fail now

    @staticmethod
    def create(path: Path) -> None:
        sqlite_db.create(path, SCHEMA)

    def __len__(self) -> int:
        with sqlite_db.failures("shared store"):
            row = self._db.execute("SELECT count(*) FROM kv WHERE expiry > ?", (self._clock(),))
            return int(row.fetchone()[0])

    async def get(self, key: str) -> bytes | None:
        with sqlite_db.failures("shared store"):
            row = self._db.execute(
                "SELECT value FROM kv WHERE key = ? AND expiry > ?", (key, self._clock())
            ).fetchone()
        return None if row is None else bytes(row[0])

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._put(key, value, ttl, only_new=False)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        return self._put(key, value, ttl, only_new=True)

    async def delete(self, key: str) -> None:
        with sqlite_db.failures("shared store"):
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def _put(self, key: str, value: bytes, ttl: float, *, only_new: bool) -> bool:
        if len(value) > self._max_value:
            raise StoreFull(f"a value of {len(value)} bytes (at most {self._max_value})")
        now = self._clock()
        with sqlite_db.transaction(self._db, "shared store") as db:
            db.execute("DELETE FROM kv WHERE expiry <= ?", (now,))
            if db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None:
                if only_new:
                    return False
            else:
                self._make_room(db)
            db.execute(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, now + max(ttl, MIN_TTL))
            )
            self._trim_bytes(db, key)
        return True

    def _trim_bytes(self, db: sqlite3.Connection, kept: str) -> None:
        """Soonest-expiring entries other than ``kept`` go until the values fit ``max_bytes``."""
        total = int(db.execute("SELECT coalesce(sum(length(value)), 0) FROM kv").fetchone()[0])
        if total <= self._max_bytes:
            return
        rows = db.execute(
            "SELECT key, length(value) FROM kv WHERE key != ? ORDER BY expiry", (kept,)
        ).fetchall()
        doomed = []
        for other, size in rows:
            if total <= self._max_bytes:
                break
            doomed.append((other,))
            total -= int(size)
        db.executemany("DELETE FROM kv WHERE key = ?", doomed)

    def _make_room(self, db: sqlite3.Connection) -> None:
        over = int(db.execute("SELECT count(*) FROM kv").fetchone()[0]) - self._max + 1
        if over > 0:  # the entries that expire soonest go
            db.execute(
                "DELETE FROM kv WHERE key IN (SELECT key FROM kv ORDER BY expiry LIMIT ?)",
                (over,),
            )

    async def close(self) -> None:
        self._db.close()


__all__ = ["SqliteStore"]
