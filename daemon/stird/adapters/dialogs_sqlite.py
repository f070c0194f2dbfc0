"""The :class:`~stird.services.dialogs.DialogStore` the worker processes of one host
share (one SQLite file, stird.adapters.sqlite_db): a dialog offered through one worker
can be answered, confirmed or ended through another, and the timer task of whichever
worker comes first ends an overdue one — exactly once, since claiming the due dialogs is
one ``UPDATE … RETURNING`` that leases their timers (:data:`LEASE`).

One row per Call-ID (``seq`` orders them by insertion: beyond ``max_dialogs`` the oldest
go, as in the memory store). Times are the policy's clock, which must be the same for
every process (time.monotonic is the host's).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from stird.adapters import sqlite_db
from stird.services.dialogs import DialogHandle, DialogRecord, Outcome, Phase

SCHEMA = """
CREATE TABLE dialogs (
    seq INTEGER PRIMARY KEY, call_id TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    phase TEXT NOT NULL, deadline REAL, due REAL, retries INTEGER NOT NULL,
    pending TEXT, kamailio_entry INTEGER, kamailio_id INTEGER, channel TEXT
);
CREATE INDEX dialogs_by_due ON dialogs (due) WHERE due IS NOT NULL;
CREATE INDEX dialogs_by_created ON dialogs (created);
"""
_COLUMNS = (
    "call_id, created, phase, deadline, retries, pending, kamailio_entry, kamailio_id, channel"
)
_GET = f"SELECT {_COLUMNS} FROM dialogs WHERE call_id = ?"  # noqa: S608 - constants
_INSERT = f"INSERT INTO dialogs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
# A claimed dialog that still needs an action (an answered one to fail, a failed one to
# end) is leased, not disarmed: its timer comes back LEASE seconds later, so a worker killed
# between the claim and the end leaves it to the others instead of leaving the call up.
# Ending it removes the row; a second end of one dialog is harmless (the PBX knows it no more).
_CLAIM = f"""UPDATE dialogs SET due = CASE WHEN phase = 'answered' OR pending IS NOT NULL
    THEN ? ELSE NULL END WHERE seq IN
    (SELECT seq FROM dialogs WHERE due <= ? ORDER BY due LIMIT ?) RETURNING {_COLUMNS}"""  # noqa: S608
MAX_CLAIM = 1000  # dialogs one tick claims at most (the rest wait for the next tick)
LEASE = 30.0  # s a worker has to act on the dialogs it claimed (the PBX calls time out first)


def _record(row: Any) -> DialogRecord:
    call_id, created, phase, deadline, retries, pending, entry, h_id, channel = row
    kamailio = (int(entry), int(h_id)) if entry is not None and h_id is not None else None
    return DialogRecord(
        call_id=str(call_id),
        handle=DialogHandle(kamailio=kamailio, asterisk_channel=channel),
        created=float(created),
        phase=Phase(phase),
        deadline=None if deadline is None else float(deadline),
        retries=int(retries),
        pending=None if pending is None else Outcome(pending),
    )


class SqliteDialogStore:
    def __init__(
        self, path: Path, max_dialogs: int = 10_000, *, timeout: float = sqlite_db.BUSY_TIMEOUT
    ) -> None:
        if max_dialogs < 1:
            raise ValueError("max_dialogs must be at least 1")
        self.path, self._max = path, max_dialogs
        with sqlite_db.failures("dialog store"):
            self._db: sqlite3.Connection = sqlite_db.connect(path, timeout)
            self._db.execute("SELECT count(*) FROM dialogs").fetchone()  # damaged: fail now

    @staticmethod
    def create(path: Path) -> None:
        """The empty shared file (the supervisor, before forking the workers)."""
        sqlite_db.create(path, SCHEMA)

    def __len__(self) -> int:
        with sqlite_db.failures("dialog store"):
            return int(self._db.execute("SELECT count(*) FROM dialogs").fetchone()[0])

    def get(self, call_id: str) -> DialogRecord | None:
        with sqlite_db.failures("dialog store"):
            row = self._db.execute(_GET, (call_id,)).fetchone()
        return None if row is None else _record(row)

    def insert(self, record: DialogRecord) -> None:
        kamailio = record.handle.kamailio or (None, None)
        with sqlite_db.transaction(self._db, "dialog store") as db:
            db.execute("DELETE FROM dialogs WHERE call_id = ?", (record.call_id,))
            over = int(db.execute("SELECT count(*) FROM dialogs").fetchone()[0]) - self._max + 1
            if over > 0:  # the oldest go; they are counted nowhere
                db.execute(
                    "DELETE FROM dialogs WHERE seq IN "
                    "(SELECT seq FROM dialogs ORDER BY seq LIMIT ?)",
                    (over,),
                )
            db.execute(
                _INSERT,
                (record.call_id, record.created, record.phase.value, record.deadline,
                 record.retries, None if record.pending is None else record.pending.value,
                 *kamailio, record.handle.asterisk_channel),
            )  # fmt: skip

    def update(
        self, record: DialogRecord, *, due: float | None = None, expect: Phase | None = None
    ) -> bool:
        """One statement, so the phase test and the change are atomic across workers."""
        with sqlite_db.failures("dialog store"):
            cursor = self._db.execute(
                "UPDATE dialogs SET phase = ?, deadline = ?, retries = ?, pending = ?, "
                "due = coalesce(?, due) WHERE call_id = ? AND (? IS NULL OR phase = ?)",
                (record.phase.value, record.deadline, record.retries,
                 None if record.pending is None else record.pending.value, due,
                 record.call_id, *(2 * [None if expect is None else expect.value])),
            )  # fmt: skip
        return cursor.rowcount > 0

    def remove(self, call_id: str) -> None:
        with sqlite_db.failures("dialog store"):
            self._db.execute("DELETE FROM dialogs WHERE call_id = ?", (call_id,))

    def claim_due(self, now: float) -> list[DialogRecord]:
        with sqlite_db.failures("dialog store"):
            rows = self._db.execute(_CLAIM, (now + LEASE, now, MAX_CLAIM)).fetchall()
        return [_record(row) for row in rows]

    def evict_created_before(self, moment: float) -> None:
        with sqlite_db.failures("dialog store"):
            self._db.execute("DELETE FROM dialogs WHERE created <= ?", (moment,))

    def close(self) -> None:
        self._db.close()


__all__ = ["SqliteDialogStore"]
