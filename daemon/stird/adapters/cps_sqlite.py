"""The :class:`~stird.services.ports.CpsStore` the worker processes of one host share: one
SQLite file (stird.adapters.sqlite_db) in their runtime directory, so the embedded CPS
answers the same through every worker without Redis.

The semantics are :class:`~stird.adapters.cps_memory.MemoryCpsStore`'s exactly: the same
caps (per client, per client and number, per number and pool, bytes per pool, entries and
bytes in all, :func:`~stird.adapters.cps_memory.entry_cost`), checked in the same order,
all or none of a batch stored. An ``add`` is one ``BEGIN IMMEDIATE`` transaction (purge
what aged out, count, insert), so two workers cannot both pass a cap. Triggers keep the
per-pool totals (entries, bytes) in step with the entries table, so the global caps cost
no scan; the per-client and per-number counts use indexes and are bounded by the caps.
Reads need no lock (WAL) and skip expired rows; the next ``add`` removes them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stird.adapters import sqlite_db
from stird.adapters.cps_memory import DEFAULT_MAX_BYTES, entry_cost
from stird.services.ports import CpsAdmission, CpsCaps, cps_admission

SCHEMA = """
CREATE TABLE cps_entries (
    tn TEXT NOT NULL, id TEXT NOT NULL, blob BLOB NOT NULL, expiry REAL NOT NULL,
    client TEXT NOT NULL, pool TEXT NOT NULL, cost INTEGER NOT NULL,
    PRIMARY KEY (tn, id)
) WITHOUT ROWID;
CREATE INDEX cps_by_expiry ON cps_entries (expiry);
CREATE INDEX cps_by_client ON cps_entries (client, tn);
CREATE INDEX cps_by_tn_pool ON cps_entries (tn, pool);
CREATE TABLE cps_totals (
    pool TEXT PRIMARY KEY, entries INTEGER NOT NULL, bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER cps_added AFTER INSERT ON cps_entries BEGIN
    INSERT OR IGNORE INTO cps_totals VALUES (NEW.pool, 0, 0);
    UPDATE cps_totals SET entries = entries + 1, bytes = bytes + NEW.cost
        WHERE pool = NEW.pool;
END;
CREATE TRIGGER cps_removed AFTER DELETE ON cps_entries BEGIN
    UPDATE cps_totals SET entries = entries - 1, bytes = bytes - OLD.cost
        WHERE pool = OLD.pool;
END;
"""

_COUNT_TN_POOL = "SELECT count(*) FROM cps_entries WHERE tn = ? AND pool = ?"
_COUNT_CLIENT = "SELECT count(*) FROM cps_entries WHERE client = ?"
_COUNT_CLIENT_TN = "SELECT count(*) FROM cps_entries WHERE client = ? AND tn = ?"
_TOTALS = "SELECT coalesce(sum(entries), 0), coalesce(sum(bytes), 0) FROM cps_totals"
_POOL_BYTES = "SELECT coalesce(sum(bytes), 0) FROM cps_totals WHERE pool = ?"
MAX_LIST = 1000  # entries one number lists at most (as the Redis store)


@dataclass(frozen=True, slots=True)
class _Usage:
    """:class:`~stird.services.ports.CpsUsage` inside one transaction: a query per figure,
    asked only while the caps before it passed."""

    db: sqlite3.Connection
    number: str
    owner: str  # the client
    pool: str

    def _one(self, sql: str, *args: str) -> int:
        return int(self.db.execute(sql, args).fetchone()[0])

    def tn_pool(self) -> int:
        return self._one(_COUNT_TN_POOL, self.number, self.pool)

    def client(self) -> int:
        return self._one(_COUNT_CLIENT, self.owner)

    def client_tn(self) -> int:
        return self._one(_COUNT_CLIENT_TN, self.owner, self.number)

    def totals(self) -> tuple[int, int]:
        count, stored = self.db.execute(_TOTALS).fetchone()
        return int(count), int(stored)

    def pool_bytes(self) -> int:
        return self._one(_POOL_BYTES, self.pool)


class SqliteCpsStore:
    """Opens the shared file at ``path`` (made by :meth:`create`). ``max_entries`` and
    ``max_bytes`` bound the file's contents; every worker passes the same ones."""

    def __init__(
        self,
        path: Path,
        max_entries: int = 100_000,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = sqlite_db.BUSY_TIMEOUT,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be at least 1")
        self.path, self._max, self.max_bytes = path, max_entries, max_bytes
        with sqlite_db.failures("CPS store"):
            self._db = sqlite_db.connect(path, timeout)
            self._db.execute(_TOTALS).fetchone()  # a damaged file fails here, at start-up

    @staticmethod
    def create(path: Path) -> None:
        """The empty shared file (the supervisor, before forking the workers)."""
        sqlite_db.create(path, SCHEMA)

    def __len__(self) -> int:
        with sqlite_db.failures("CPS store"):
            return int(self._db.execute(_TOTALS).fetchone()[0])

    @property
    def stored_bytes(self) -> int:
        """The bytes of the entries, as :func:`entry_cost` counts them (``bytes`` in the
        memory store)."""
        with sqlite_db.failures("CPS store"):
            return int(self._db.execute(_TOTALS).fetchone()[1])

    def _admission(
        self, db: sqlite3.Connection, tn: str, client: str, n: int, size: int, *, caps: CpsCaps
    ) -> CpsAdmission:
        usage = _Usage(db, tn, client, caps.pool)
        return cps_admission(usage, n, size, caps, max_entries=self._max, max_bytes=self.max_bytes)

    async def add(
        self,
        tn: str,
        items: Sequence[tuple[str, bytes]],
        *,
        client: str,
        now: float,
        ttl: float,
        caps: CpsCaps,
    ) -> CpsAdmission:
        with sqlite_db.transaction(self._db, "CPS store") as db:
            db.execute("DELETE FROM cps_entries WHERE expiry <= ?", (now,))
            wanted = dict(items)  # a repeated id counts once, as in the memory store
            rows = db.execute("SELECT id FROM cps_entries WHERE tn = ?", (tn,))
            present = {row[0] for row in rows}
            fresh = [(i, blob) for i, blob in wanted.items() if i not in present]
            size = sum(entry_cost(entry_id, blob) for entry_id, blob in fresh)
            admission = self._admission(db, tn, client, len(fresh), size, caps=caps)
            if admission is CpsAdmission.STORED and fresh:
                expiry = now + ttl
                db.executemany(
                    "INSERT INTO cps_entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(tn, i, blob, expiry, client, caps.pool, entry_cost(i, blob))
                     for i, blob in fresh],
                )  # fmt: skip
        return admission

    async def entries(self, tn: str, now: float) -> list[tuple[str, bytes]]:
        with sqlite_db.failures("CPS store"):
            rows = self._db.execute(
                "SELECT id, blob FROM cps_entries WHERE tn = ? AND expiry > ? LIMIT ?",
                (tn, now, MAX_LIST),
            ).fetchall()
        return [(str(entry_id), bytes(blob)) for entry_id, blob in rows]

    async def entry(self, tn: str, entry_id: str, now: float) -> bytes | None:
        with sqlite_db.failures("CPS store"):
            row = self._db.execute(
                "SELECT blob FROM cps_entries WHERE tn = ? AND id = ? AND expiry > ?",
                (tn, entry_id, now),
            ).fetchone()
        return None if row is None else bytes(row[0])

    async def close(self) -> None:
        self._db.close()


__all__ = ["SqliteCpsStore"]
