"""SQLite files shared by the worker processes of one host (stdlib :mod:`sqlite3`).

The supervisor (stird.wiring.workers) creates each file with its schema in the workers'
private runtime directory (tmpfs: ``$RUNTIME_DIRECTORY`` or /dev/shm) and removes it at
exit; every worker opens its own connection after the fork. WAL journal, so readers never
wait for a writer; writers take the lock at ``BEGIN IMMEDIATE`` and hold it for one short
transaction. A lock held elsewhere longer than ``busy_timeout`` (bounded: the calls block
the event loop) is :class:`~stird.services.stores.StoreUnavailable`, a full disk
:class:`~stird.services.stores.StoreFull`, any other SQLite failure (a corrupt file, a
missing table) StoreUnavailable: the callers already cope with those.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from stird.services.stores import StoreFull, StoreUnavailable

BUSY_TIMEOUT = 0.1  # s a call may wait for another worker's transaction (blocks the loop)
JOURNAL_LIMIT = 4 * 1024 * 1024  # bytes the WAL file is truncated to after a checkpoint
_FULL = (sqlite3.SQLITE_FULL,)


def create(path: Path, schema: str) -> None:
    """A new database file at ``path`` (mode 0600) with ``schema``, in WAL mode."""
    path.touch(mode=0o600, exist_ok=False)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
    finally:
        db.close()


def connect(path: Path, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """This process's connection to an existing file (never creates one: a missing file is
    an error, not a fresh empty store). Autocommit: transactions are explicit."""
    if not path.is_file():
        raise FileNotFoundError(f"no shared database at {path}")
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={max(1, int(timeout * 1000))}")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL on tmpfs: no fsync at commit anyway
    db.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT}")
    return db


@contextlib.contextmanager
def failures(what: str) -> Iterator[None]:
    """SQLite errors as the store errors the services handle."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code in _FULL:
            raise StoreFull(f"{what}: {exc}") from exc
        raise StoreUnavailable(f"{what}: {exc}") from exc


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any error), errors translated."""
    with failures(what):
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise


__all__ = ["BUSY_TIMEOUT", "connect", "create", "failures", "transaction"]
