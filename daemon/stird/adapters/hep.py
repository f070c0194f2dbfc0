"""The HEP3 collector for Asterisk (``res_hep`` + ``res_hep_pjsip``, ``[asterisk] hep``).

Asterisk copies every SIP message it receives or sends to this UDP socket, SDP included
(../shared/asterisk README fact 33). stird keeps, per Call-ID and for a few seconds:

* the **offer** of the dialog-forming INVITE (an INVITE without To tag): the SDP the
  FastAGI verify route checks an inbound msec PASSporT's ``mky`` against
  (:meth:`SdpStore.wait_offer`: the HEP copy usually arrives 3–16 ms before the AGI,
  but nothing in Asterisk orders the two);
* nothing else: the callee's answers and in-dialog requests carrying an ``Identity``
  header on a dialog stird signed (RFC 8862 §4.3) are verified at once as ``backwards``
  requests and fed to the msec dialog policy, which ends the call through AMI.

There is no direction flag in HEP: the offer is the request without To tag; the
callee's in-dialog requests are those whose From tag is not the caller's (the From tag
of the INVITE), and every response to the INVITE comes from the callee.

Retransmissions (identical copies) are dropped by a bounded set of payload digests. With
``hep_password`` a datagram without the same ``capture_password`` (chunk 14, sent in
clear by Asterisk: a shared token, compared in constant time) is dropped. Everything is
bounded: calls, bytes, digests, pending waits and verification tasks.

One process keeps its offers and digests in memory here (:class:`SdpStore`,
:class:`Digests`: a waiter's future is woken by the store, no poll). With ``[server]
workers``, each worker runs this collector on the same UDP port and
stird.adapters.hep_shared keeps them in shared memory, with the same interface
(:class:`OfferStore`, :class:`SeenDigests`) and the same bounds; its docstring says how
a session waits there for a copy another worker took. The connected-identity bookkeeping
(:class:`DialogBook`: the Identity values the sign route expects to see leave, the
callers' From tags) is :class:`MemoryDialogBook` in one process and
stird.adapters.hep_shared.SharedDialogBook among workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from stird.adapters.api import StirApi
from stird.core.errors import StirError
from stird.core.hep import HepError, SipMessage, decode_hep, parse_sip
from stird.core.identity import parse_identity
from stird.core.passport import Ppt
from stird.services.dialogs import DialogHandle

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 4 << 20  # SO_RCVBUF asked for: bursts of 64 KiB datagrams
MAX_SDP = 16384  # bytes of one stored SDP body
_ANSWERS = range(180, 300)


@dataclass(slots=True)
class _Offer:
    sdp: str
    from_tag: str | None
    expires: float


class OfferWaits:
    """The waiters of :meth:`wait_offer`, futures by Call-ID (at most ``max_waiters``),
    woken by :meth:`_wake`; a store says what :meth:`offer` finds."""

    def __init__(self, max_waiters: int) -> None:
        self.max_waiters = max_waiters
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._waiting = 0  # futures in _waiters, bounded by max_waiters

    def offer(self, call_id: str) -> str | None:
        raise NotImplementedError

    def _watch(self, call_id: str) -> None:
        """A waiter for ``call_id`` was added (the shared store starts its poll here)."""

    def _wake(self, call_id: str, sdp: str) -> None:
        for waiter in self._waiters.pop(call_id, []):
            if not waiter.done():
                waiter.set_result(sdp)

    async def wait_offer(self, call_id: str, timeout: float) -> str | None:
        """The offer for ``call_id``, waiting at most ``timeout`` seconds for its copy."""
        found = self.offer(call_id)
        if found is not None or timeout <= 0:
            return found
        if self._waiting >= self.max_waiters:
            return None
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(call_id, []).append(waiter)
        self._waiting += 1
        try:
            self._watch(call_id)
            async with asyncio.timeout(timeout):  # not wait_for: no task per wait (3.11)
                return await waiter
        except TimeoutError:
            return None
        finally:
            self._waiting -= 1
            waiters = self._waiters.get(call_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(call_id, None)

    def close(self) -> None:
        """Release what the store holds (nothing in memory)."""


class SdpStore(OfferWaits):
    """SDP offers by Call-ID: at most ``max_calls`` entries and ``max_bytes`` of SDP, each
    kept ``ttl`` seconds; waiters are woken when their Call-ID's offer arrives."""

    def __init__(
        self,
        *,
        ttl: float = 5.0,
        max_calls: int = 4096,
        max_bytes: int = 8 << 20,
        max_waiters: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_waiters)
        self.ttl, self.max_calls, self.max_bytes = ttl, max_calls, max_bytes
        self._clock = clock
        self._offers: OrderedDict[str, _Offer] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._offers)

    @property
    def size(self) -> int:
        return self._bytes

    def _drop(self, call_id: str) -> None:
        offer = self._offers.pop(call_id, None)
        if offer is not None:
            self._bytes -= len(offer.sdp)

    def _expire(self, now: float) -> None:
        while self._offers:
            call_id, oldest = next(iter(self._offers.items()))
            if oldest.expires > now and len(self._offers) <= self.max_calls \
                    and self._bytes <= self.max_bytes:  # fmt: skip
                break
            self._drop(call_id)

    def put_offer(self, call_id: str, sdp: str, from_tag: str | None) -> None:
        """The dialog-forming INVITE's SDP (the first one seen wins: a retransmission or a
        forged later copy does not replace it)."""
        if len(sdp) > MAX_SDP:
            return
        now = self._clock()
        self._expire(now)
        if call_id in self._offers:
            return
        self._offers[call_id] = _Offer(sdp, from_tag, now + self.ttl)
        self._bytes += len(sdp)
        self._expire(now)
        self._wake(call_id, sdp)

    def offer(self, call_id: str) -> str | None:
        found = self._offers.get(call_id)
        if found is None or found.expires <= self._clock():
            return None
        return found.sdp

    def caller_tag(self, call_id: str) -> str | None:
        found = self._offers.get(call_id)
        return found.from_tag if found is not None else None


class Digests:
    """The digests of the SIP messages seen lately, to drop retransmissions: the last
    ``limit`` of them, in this process."""

    def __init__(self, limit: int = 8192) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._limit = limit

    def first(self, digest: bytes) -> bool:
        """Whether ``digest`` is new (it is remembered from now on)."""
        if digest in self._seen:
            return False
        self._seen[digest] = None
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True

    def close(self) -> None:
        """Nothing to release (the shared digests unmap their table)."""


def _tokens(values: list[str]) -> list[str]:
    """The PASSporT part of each Identity value (what Asterisk copies byte for byte)."""
    return [v.split(";", 1)[0].strip() for v in values if v.strip()]


def _has_msec(values: list[str]) -> bool:
    for value in values:
        try:
            if any(h.ppt == Ppt.MSEC for h in parse_identity(value)):
                return True
        except StirError:
            continue
    return False


class OfferStore(Protocol):
    """What the collector and the FastAGI route need of an SDP store: :class:`SdpStore`
    (one process) or stird.adapters.hep_shared.SharedSdpStore (workers)."""

    def put_offer(self, call_id: str, sdp: str, from_tag: str | None) -> None: ...
    def offer(self, call_id: str) -> str | None: ...
    def caller_tag(self, call_id: str) -> str | None: ...
    async def wait_offer(self, call_id: str, timeout: float) -> str | None: ...
    def close(self) -> None: ...


class SeenDigests(Protocol):
    """:class:`Digests`, or stird.adapters.hep_shared.SharedDigests (workers)."""

    def first(self, digest: bytes) -> bool: ...
    def close(self) -> None: ...


class DialogBook(Protocol):
    """The collector's connected-identity bookkeeping (RFC 8862 §4.3): the Identity values
    the sign route expects to see leave Asterisk (each with its channel, for ``expect_ttl``
    seconds) and the caller's From tag of each tracked dialog. :class:`MemoryDialogBook`
    (one process) or stird.adapters.hep_shared.SharedDialogBook (workers: the sign session
    and the HEP copies may be on different workers)."""

    def expect(self, token: str, channel: str) -> None: ...
    def expected(self, token: str) -> str | None: ...  # its channel, while not expired
    def remember_caller(self, call_id: str, tag: str) -> None: ...
    def caller(self, call_id: str) -> str | None: ...
    def close(self) -> None: ...


class MemoryDialogBook:
    """:class:`DialogBook` in this process: at most ``max_entries`` expected values (the
    oldest dropped first), each ``ttl`` seconds, and at most ``max_entries`` callers' tags
    (the oldest dropped first; a dialog's tag is needed as long as the dialog policy tracks
    it, so it has no TTL of its own)."""

    def __init__(
        self,
        *,
        max_entries: int = 4096,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries, self.ttl, self._clock = max_entries, ttl, clock
        self._expected: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._tags: OrderedDict[str, str] = OrderedDict()

    def expect(self, token: str, channel: str) -> None:
        self._expected[token] = (channel, self._clock() + self.ttl)
        self._expected.move_to_end(token)
        while len(self._expected) > self.max_entries:
            self._expected.popitem(last=False)

    def expected(self, token: str) -> str | None:
        found = self._expected.get(token)  # kept: a challenged INVITE is sent again
        return found[0] if found is not None and found[1] > self._clock() else None

    def remember_caller(self, call_id: str, tag: str) -> None:
        self._tags[call_id] = tag
        while len(self._tags) > self.max_entries:
            self._tags.popitem(last=False)

    def caller(self, call_id: str) -> str | None:
        return self._tags.get(call_id)

    def close(self) -> None:
        """Nothing to release (the shared book unmaps its tables)."""


class HepCollector(asyncio.DatagramProtocol):
    """The UDP endpoint: decode, authenticate, de-duplicate, then store or act."""

    def __init__(
        self,
        api: StirApi,
        *,
        password: str | None = None,
        store: OfferStore | None = None,
        digests: SeenDigests | None = None,
        book: DialogBook | None = None,
        max_tasks: int = 256,
        max_expected: int = 4096,
        expect_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self._password = api, password.encode() if password else None
        self.store = store if store is not None else SdpStore(clock=clock)
        self.metrics = api.metrics  # stird_hep_* (stird.adapters.metrics)
        self._counted: dict[str, Counter] = {}  # stird_hep_datagrams children by result
        self.digests: SeenDigests = digests if digests is not None else Digests()
        self._max_tasks = max_tasks
        self.book: DialogBook = (
            book
            if book is not None
            else MemoryDialogBook(max_entries=max_expected, ttl=expect_ttl, clock=clock)
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self.health: dict[str, Any] = {"address": None, "datagrams": 0, "rejected": 0}

    # --- the socket ----------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 9060, *, sock: socket.socket | None = None
    ) -> tuple[str, int]:
        """Listen on ``host``:``port``, or on ``sock`` (a worker's ``SO_REUSEPORT`` socket,
        stird.adapters.sockets.udp_twin)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(host, port)
            )
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # capped by net.core.rmem_max: kernel decides
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        name = transport.get_extra_info("sockname")
        address = (str(name[0]), int(name[1]))
        self.health["address"] = f"{address[0]}:{address[1]}"
        return address

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()
        self.digests.close()
        self.book.close()

    async def drain(self) -> None:
        """Let pending backwards verifications finish (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.health["datagrams"] += 1
        result = self.receive(data)
        counted = self._counted.get(result)
        if counted is None:  # labels() takes a lock and builds the label tuple: once a result
            counted = self._counted[result] = self.metrics.hep_datagrams.labels(result)
        counted.inc()
        if result in ("decode-error", "auth-failed"):
            self.health["rejected"] += 1

    def error_received(self, exc: Exception) -> None:  # ICMP errors on a UDP socket
        log.debug("HEP socket: %s", exc)

    # --- one datagram --------------------------------------------------------------------

    def receive(self, data: bytes) -> str:
        """Handle one datagram; returns the metrics label of what happened to it."""
        try:
            packet = decode_hep(data)
        except HepError as exc:
            log.debug("HEP datagram dropped: %s", exc.detail)
            return "decode-error"
        if self._password is not None and not hmac.compare_digest(
            packet.auth_key or b"", self._password
        ):
            return "auth-failed"
        if not packet.is_sip:
            return "not-sip"
        try:
            message = parse_sip(packet.payload)
        except HepError:
            return "decode-error"
        if not self.digests.first(message.digest):
            return "duplicate"
        call_id = message.call_id or packet.correlation_id
        if call_id:
            self._handle(call_id, message)
        return "accepted"

    def _handle(self, call_id: str, message: SipMessage) -> None:
        cseq = message.cseq
        if message.method == "INVITE" and message.tag("to") is None:
            sdp = message.sdp
            if sdp is not None:
                self.store.put_offer(call_id, sdp, message.tag("from"))
            self._offered(call_id, message)
            return
        policy = self.api.dialogs.policy
        if policy is None or policy.phase(call_id) is None:
            return
        failed = (
            message.status is not None
            and message.status >= 300
            and message.status
            not in (
                401,
                407,  # an authentication challenge: the INVITE is sent again
            )
        )
        if message.method == "BYE" or (failed and cseq is not None and cseq[1] == "INVITE"):
            policy.ended(call_id)
            return
        callee = self._from_callee(call_id, message, cseq)
        identity = message.all("identity")
        answered = message.status in range(200, 300) and cseq is not None and cseq[1] == "INVITE"
        if callee and (identity or answered):
            self._spawn(self._backwards(call_id, message, identity, answered))

    def _from_callee(self, call_id: str, message: SipMessage, cseq: Any) -> bool:
        """Responses to the caller's requests carry the caller's From tag; the callee's own
        requests carry another one."""
        caller = self.book.caller(call_id) or self.store.caller_tag(call_id)
        if message.status is not None:
            to_invite = message.status in _ANSWERS and cseq is not None and cseq[1] == "INVITE"
            return to_invite and (caller is None or message.tag("from") == caller)
        if message.method not in ("UPDATE", "INVITE", "PRACK"):
            return False
        return caller is not None and message.tag("from") != caller

    # --- connected identity (RFC 8862 §4.3–4.4) -------------------------------------------

    def expect(self, identities: list[str], channel: str) -> None:
        """The sign route signed these Identity values for ``channel``: when the INVITE
        carrying one leaves Asterisk, its Call-ID is tracked by the dialog policy."""
        if self.api.dialogs.policy is None or not _has_msec(identities):
            return
        for token in _tokens(identities):
            self.book.expect(token, channel)

    def _offered(self, call_id: str, message: SipMessage) -> None:
        policy = self.api.dialogs.policy
        if policy is None:
            return
        for token in _tokens(message.all("identity")):
            channel = self.book.expected(token)  # kept: a challenged INVITE is sent again
            if channel is not None:
                policy.offered(call_id, DialogHandle(asterisk_channel=channel))
                tag = message.tag("from")
                if tag:
                    self.book.remember_caller(call_id, tag)
                return

    def _spawn(self, work: Any) -> None:
        if len(self._tasks) >= self._max_tasks:
            work.close()
            log.warning("HEP: too many backwards verifications pending; one dropped")
            return
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _backwards(
        self, call_id: str, message: SipMessage, identity: list[str], answered: bool
    ) -> None:
        """Verify the callee's msec (a response: its From and To swapped back, so that
        orig is the callee), then tell the policy about the answer."""
        if identity:
            response = message.status is not None
            params: dict[str, Any] = {
                "identity": identity,
                "from": message.first("to" if response else "from"),
                "to": message.first("from" if response else "to"),
                "date": message.first("date"),
                "call_id": call_id,
                "direction": "backwards",
            }
            if message.sdp is not None:
                params["sdp"] = message.sdp
            pai = message.first("p-asserted-identity")
            if pai:
                params["pai"] = pai
            try:
                body = await self.api.verify({k: v for k, v in params.items() if v})
                self.metrics.hep_backwards.labels(str(body.get("verdict"))).inc()
                log.info("HEP: backwards %s on %s: %s, dialog %s", message.method or
                         message.status, call_id, body.get("verdict"),
                         (body.get("dialog") or {}).get("decision"))  # fmt: skip
            except Exception as exc:  # a bad header, overload: the window decides
                self.metrics.hep_backwards.labels("error").inc()
                log.warning("HEP: backwards verification on %s failed: %s", call_id, exc)
        policy = self.api.dialogs.policy
        if answered and policy is not None:
            policy.answered(call_id)


__all__ = [
    "DialogBook",
    "Digests",
    "HepCollector",
    "MemoryDialogBook",
    "OfferStore",
    "OfferWaits",
    "SdpStore",
    "SeenDigests",
]
