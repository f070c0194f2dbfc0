"""How stird ends a dialog the msec policy condemned (RFC 8862 §4.4): through the PBX.

* :class:`KamailioEnder`: `dlg.end_dlg` over Kamailio's jsonrpcs, with the dialog hash
  entry and id as JSON integers and the ``Reason:`` header line as the third parameter
  (Kamailio then sends BYE, with that Reason, to both parties).
* :class:`AsteriskEnder`: AMI ``Hangup`` of the channel (Asterisk sends the BYE).
* :class:`RoutingEnder`: picks one by what the dialog's handle names; PBX links can be
  attached after the policy exists (the daemon starts them later).
* :class:`DeferredEnder`: acts a moment later in the background, so the answer that
  caused the decision (438 to the callee's backwards UPDATE) leaves before the BYEs.

An ender never raises for a PBX problem: it logs and returns False.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from stird.adapters.ami import AmiClient
from stird.adapters.kamailio_rpc import KamailioRpc, KamailioRpcError
from stird.services.dialogs import DialogEnder, DialogHandle

log = logging.getLogger(__name__)

Q850_CALL_REJECTED = 21


def _one_line(text: str) -> str:
    return " ".join(text.replace("\0", " ").splitlines()).strip()


class KamailioEnder:
    def __init__(self, rpc: KamailioRpc) -> None:
        self.rpc = rpc

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        if handle.kamailio is None:
            return False
        h_entry, h_id = handle.kamailio
        try:
            await self.rpc.end_dialog(int(h_entry), int(h_id), _one_line(reason) or None)
        except KamailioRpcError as exc:  # e.g. "Dialog not found": already over
            log.warning("dlg.end_dlg %d %d: %s", h_entry, h_id, exc)
            return False
        return True


class AsteriskEnder:
    def __init__(self, ami: AmiClient, cause: int = Q850_CALL_REJECTED) -> None:
        self.ami, self.cause = ami, cause

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        if not handle.asterisk_channel:
            return False
        result = await self.ami.hangup(handle.asterisk_channel, self.cause)
        if not result.ok:
            channel, outcome = handle.asterisk_channel, result.outcome.value
            log.warning("AMI Hangup %s: %s %s", channel, outcome, result.message)
        return result.ok


class RoutingEnder:
    """Kamailio for a handle with dialog ids, Asterisk for one with a channel."""

    def __init__(
        self, kamailio: DialogEnder | None = None, asterisk: DialogEnder | None = None
    ) -> None:
        self.kamailio, self.asterisk = kamailio, asterisk

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        if handle.kamailio is not None and self.kamailio is not None:
            return await self.kamailio.end(handle, reason)
        if handle.asterisk_channel and self.asterisk is not None:
            return await self.asterisk.end(handle, reason)
        log.warning("no PBX link can end the dialog %s", handle)
        return False


class DeferredEnder:
    """Ends ``delay`` seconds later in a task; ``end()`` answers at once (True: asked)."""

    def __init__(self, inner: DialogEnder, delay: float = 0.2, max_pending: int = 1024) -> None:
        self.inner, self.delay, self.max_pending = inner, delay, max_pending
        self._pending: set[asyncio.Task[bool]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def end(self, handle: DialogHandle, reason: str) -> bool:
        if len(self._pending) >= self.max_pending:
            return await self.inner.end(handle, reason)  # no more tasks: act now
        task = asyncio.get_running_loop().create_task(self._later(handle, reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _later(self, handle: DialogHandle, reason: str) -> bool:
        await asyncio.sleep(self.delay)
        try:
            return await self.inner.end(handle, reason)
        except Exception:
            log.exception("ending dialog %s failed", handle)
            return False

    async def drain(self) -> None:
        """Let the pending ends finish (used by tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["AsteriskEnder", "DeferredEnder", "KamailioEnder", "RoutingEnder"]
