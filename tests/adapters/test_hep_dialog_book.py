"""HEP's connected-identity bookkeeping (stird.adapters.hep.DialogBook): the Identity values
the FastAGI sign route expects to see leave Asterisk and the callers' From tags, in memory
for one process and in shared tables for the workers (stird.adapters.hep_shared). Two
attachments of the same files, and two collectors on them, stand for two workers: the
sign session on one, every HEP copy on the other (Asterisk sends them from one socket)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stird.adapters import hep_shared
from stird.adapters.api import StirApi
from stird.adapters.dialog_api import DialogApi
from stird.adapters.hep import HepCollector, MemoryDialogBook
from stird.adapters.hep_shared import (
    SharedDialogBook,
    attach_book,
    attach_shared,
    create_shared,
)
from stird.core.hep import parse_sip
from stird.core.identity import parse_identity
from stird.services.dialogs import DialogHandle, DialogPolicy, MsecPolicy, Phase
from tests.adapters.test_agi import make_api
from tests.adapters.test_hep_asterisk import CALLEE, CALLER, _fix_parties, callee_msec
from tests.hep_captures import replayed, set_header, sip_text

PHONE = "PJSIP/phone-00000001"


# --- the book alone ----------------------------------------------------------------------


def test_the_memory_book_is_bounded_and_expires() -> None:
    now = [0.0]
    book = MemoryDialogBook(max_entries=3, ttl=60.0, clock=lambda: now[0])
    for n in range(5):
        book.expect(f"token-{n}", f"chan-{n}")
        book.remember_caller(f"call-{n}", f"tag-{n}")
    assert [book.expected(f"token-{n}") for n in range(5)] == [
        None, None, "chan-2", "chan-3", "chan-4"]  # fmt: skip
    assert [book.caller(f"call-{n}") for n in range(5)] == [
        None, None, "tag-2", "tag-3", "tag-4"]  # fmt: skip
    assert book.expected("token-4") == "chan-4"  # kept: a challenged INVITE is sent again
    now[0] = 60.0
    assert book.expected("token-4") is None  # expect_ttl
    assert book.caller("call-4") == "tag-4"  # as long as the dialog is tracked (bounded)


@pytest.fixture
def books(tmp_path: Path) -> Iterator[tuple[SharedDialogBook, SharedDialogBook]]:
    create_shared(tmp_path / "hep")
    a, b = attach_book(tmp_path / "hep"), attach_book(tmp_path / "hep")
    yield a, b
    a.close()
    b.close()


def test_what_one_worker_expects_the_other_finds(
    books: tuple[SharedDialogBook, SharedDialogBook],
) -> None:
    a, b = books
    a.expect("eyJ.token.sig", PHONE)
    assert b.expected("eyJ.token.sig") == PHONE
    assert b.expected("eyJ.token.sig") == PHONE  # kept: a challenged INVITE is sent again
    assert b.expected("eyJ.other.sig") is None
    b.remember_caller("call@host", "caller-tag")
    assert a.caller("call@host") == "caller-tag" and a.caller("other@host") is None
    a.expect("eyJ.token.sig", "PJSIP/phone-00000002")  # signed again: the latest channel
    assert b.expected("eyJ.token.sig") == "PJSIP/phone-00000002"


def test_expected_values_expire_across_workers(tmp_path: Path) -> None:
    create_shared(tmp_path / "hep")
    a = attach_book(tmp_path / "hep", expect_ttl=0.001)
    b = attach_book(tmp_path / "hep")
    try:
        a.expect("eyJ.short.sig", PHONE)
        deadline = time.monotonic() + 5
        while b.expected("eyJ.short.sig") is not None:  # 1 ms, bounded wait
            assert time.monotonic() < deadline
    finally:
        a.close()
        b.close()


def test_oversized_values_are_not_kept(books: tuple[SharedDialogBook, SharedDialogBook]) -> None:
    a, b = books
    a.expect("eyJ.long.sig", "PJSIP/" + "x" * hep_shared.MAX_CHANNEL)
    assert b.expected("eyJ.long.sig") is None
    a.remember_caller("long@host", "t" * (hep_shared.MAX_TAG + 1))
    assert b.caller("long@host") is None  # the offer's tag is used instead (as before)


def test_a_flood_cannot_grow_the_shared_tables(
    books: tuple[SharedDialogBook, SharedDialogBook],
) -> None:
    """10,000 expected values and 10,000 callers' tags from two workers, the longest values
    allowed: each table keeps its 4,096 entries (max_expected) in the same file."""
    a, b = books
    sizes = {os.path.getsize(t.path) for t in (a.tokens, a.callers)}
    channel, tag = "C" * hep_shared.MAX_CHANNEL, "T" * hep_shared.MAX_TAG
    for n in range(10_000):
        (a if n % 2 else b).expect(f"eyJ.flood-{n}.sig", channel)
        (b if n % 2 else a).remember_caller(f"flood-{n}@x", tag)
    for table in (a.tokens, a.callers):
        assert table.max_entries == 4096 and len(table) <= 4096
    assert {os.path.getsize(t.path) for t in (a.tokens, a.callers)} == sizes
    assert b.expected("eyJ.flood-9999.sig") == channel  # the newest are there
    assert a.caller("flood-9999@x") == tag
    assert sum(b.expected(f"eyJ.flood-{n}.sig") is not None for n in range(10_000)) <= 4096
    # and what is expected after the flood is found
    a.expect("eyJ.after.sig", PHONE)
    assert b.expected("eyJ.after.sig") == PHONE


# --- two collectors: the sign session on one worker, the HEP copies on the other ----------


@dataclass
class Ended:
    handles: list[DialogHandle]

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        self.handles.append(handle)
        return True


@dataclass
class Pair:
    signer: HepCollector  # the worker whose FastAGI session signed
    taker: HepCollector  # the worker that receives Asterisk's HEP copies
    policy: DialogPolicy  # shared by the workers (a SQLite file; one object here)
    ended: Ended

    async def signed_invite(self, call_id: str | None = None) -> tuple[str, str]:
        """Captured file 12 (Asterisk's INVITE to the trunk) carrying an msec Identity the
        signer's sign route made for PHONE; (Call-ID, message)."""
        sdp = sip_text("12").split("\r\n\r\n", 1)[1]
        out = await self.signer.api.sign({"orig": CALLER, "dest": [CALLEE], "sdp": sdp,
                                          "ppt": "msec"})  # fmt: skip
        [msec] = [v for v in out["identity"] if parse_identity(v)[0].ppt == "msec"]
        self.signer.expect([msec], PHONE)  # what the sign route does (stird.adapters.agi)
        invite = set_header(sip_text("12"), "Identity", msec)
        if call_id is not None:
            invite = set_header(invite, "Call-ID", call_id)
        return parse_sip(invite.encode()).call_id or "", invite


def _api(tmp_path: Path, dialogs: DialogApi) -> StirApi:
    api = make_api(tmp_path)
    api.dialogs = dialogs
    return api


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    create_shared(tmp_path / "hep")
    ended = Ended([])
    policy = DialogPolicy(ended, policy=MsecPolicy.MANDATORY, window=30.0)
    dialogs = DialogApi(policy)
    collectors = []
    for name in ("signer", "taker"):
        store, digests = attach_shared(tmp_path / "hep")
        collectors.append(HepCollector(_api(tmp_path / name, dialogs), store=store,
                                       digests=digests, book=attach_book(tmp_path / "hep")))  # fmt: skip
    yield Pair(*collectors, policy, ended)
    for collector in collectors:
        await collector.close()


async def test_the_callee_proof_is_checked_on_the_worker_that_did_not_sign(pair: Pair) -> None:
    call_id, invite = await pair.signed_invite()
    assert pair.taker.receive(replayed("12", invite)) == "accepted"
    assert pair.policy.phase(call_id) is Phase.OFFERED  # found in the shared book
    caller = parse_sip(invite.encode()).tag("from")
    assert pair.signer.book.caller(call_id) == caller  # remembered for every worker
    answer = await callee_msec(pair.taker.api, _fix_parties(sip_text("14")), tamper=True)
    assert pair.taker.receive(replayed("14", answer)) == "accepted"
    await pair.taker.drain()
    assert pair.policy.phase(call_id) is Phase.FAILED
    await pair.policy.tick()
    assert pair.ended.handles == [DialogHandle(asterisk_channel=PHONE)]


async def test_a_challenged_invite_sent_again_is_tracked_again(pair: Pair) -> None:
    call_id, invite = await pair.signed_invite()
    assert pair.taker.receive(replayed("12", invite)) == "accepted"
    pair.policy.ended(call_id)  # e.g. a 401 then a new INVITE with the same Identity
    again = invite.replace("CSeq: ", "CSeq: 1", 1)  # another message, same Identity
    assert pair.taker.receive(replayed("12", again)) == "accepted"
    assert pair.policy.phase(call_id) is Phase.OFFERED


async def test_in_memory_books_would_miss_it(tmp_path: Path) -> None:
    """What the shared book fixes: a per-process book on each worker tracks nothing."""
    dialogs = DialogApi(DialogPolicy(Ended([]), policy=MsecPolicy.MANDATORY))
    signer = HepCollector(_api(tmp_path / "signer", dialogs))
    taker = HepCollector(_api(tmp_path / "taker", dialogs))
    pair = Pair(signer, taker, dialogs.policy, Ended([]))  # type: ignore[arg-type]
    call_id, invite = await pair.signed_invite()
    assert taker.receive(replayed("12", invite)) == "accepted"
    assert pair.policy.phase(call_id) is None
    signer.receive(replayed("12", invite))
    assert pair.policy.phase(call_id) is Phase.OFFERED
    await signer.close()
    await taker.close()


async def test_a_flood_of_copies_of_a_signed_invite_stays_bounded(pair: Pair) -> None:
    """An attacker on the HEP port replays the signed INVITE under 6,000 Call-IDs: every
    one is tracked (it carries an expected value) but the callers' table keeps 4,096."""
    _, invite = await pair.signed_invite()
    callers = pair.taker.book
    assert isinstance(callers, SharedDialogBook)
    size = os.path.getsize(callers.callers.path)
    for n in range(6_000):
        copy = set_header(invite, "Call-ID", f"flood-{n}@x")
        assert pair.taker.receive(replayed("12", copy)) == "accepted"
    assert len(callers.callers) <= 4096 and os.path.getsize(callers.callers.path) == size
    assert callers.caller("flood-5999@x") is not None
    assert len(pair.policy) <= 10_000  # the dialog store's own bound
