"""Fault injection, Kamailio side (issue #9).

* stird → Kamailio (jsonrpcs over HTTP): Kamailio restarting. While it is away calls fail
  at once with KamailioRpcError and /healthz's probe says unreachable; the first call
  after it is back succeeds (no stale kept-alive connection).
* Kamailio → stird, all real (tests/kamailio/harness.py: Kamailio 5.6, janssonrpcc, SIPp):
  stird stopped while Kamailio keeps sending gets the configured fail policy
  (``stird.fail_open`` = 1 in integrations/kamailio/stird.cfg: relayed unsigned) without
  a hang, and calls are signed again once stird is back; Kamailio restarted while stird
  runs signs again at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from stird.adapters.kamailio_rpc import KamailioRpc, KamailioRpcError, KamailioTarget, probe
from tests.faults.helpers import free_port, within
from tests.kamailio.harness import (
    Lab,
    Sipp,
    header_values,
    new_lab,
    stop_lab,
    wait_until,
)

RPC_TIMEOUT = 0.5


@asynccontextmanager
async def fake_jsonrpcs(port: int) -> AsyncIterator[list[str]]:
    """Kamailio's jsonrpcs on xhttp: answers every method; yields the methods seen."""
    seen: list[str] = []

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body["method"])
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"active": 0}})

    app = web.Application()
    app.router.add_post("/RPC", rpc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    try:
        yield seen
    finally:
        await runner.cleanup()


async def test_rpc_client_survives_a_kamailio_restart() -> None:
    port = free_port()
    rpc = KamailioRpc(KamailioTarget(url=f"http://127.0.0.1:{port}/RPC", timeout=RPC_TIMEOUT))
    try:
        async with fake_jsonrpcs(port) as seen:
            assert (await probe(rpc))["reachable"] is True
            await rpc.end_dialog(1, 2, "STIR;cause=438")
        # Kamailio away: refused at once, reported, never a hang
        with pytest.raises(KamailioRpcError, match=r"dlg\.end_dlg"):
            await within(RPC_TIMEOUT, rpc.end_dialog(1, 2))
        down, _ = await within(RPC_TIMEOUT, probe(rpc))
        assert down["reachable"] is False
        async with fake_jsonrpcs(port) as seen_again:  # back, same address
            await within(RPC_TIMEOUT, rpc.end_dialog(3, 4))
            assert (await probe(rpc))["reachable"] is True
        assert seen == ["dlg.stats_active", "dlg.end_dlg"]
        assert seen_again == ["dlg.end_dlg", "dlg.stats_active"]
    finally:
        await rpc.close()


# ---------------------------------------------------------------------------- real Kamailio

TIMEOUT_MS = 500


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    shared = new_lab(tmp_path / "lab", None, {"STIRD_TIMEOUT_MS": str(TIMEOUT_MS)})
    yield shared
    stop_lab(shared)


def outgoing_call(lab: Lab, sipp: Sipp) -> tuple[list[int], list[str], float]:
    """One call through Kamailio's signing route: the UAC's finals, the Identity headers
    the UAS received, seconds from INVITE to the final answer."""
    uas = sipp.uas(lab.uas_port)
    uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port, timeout=15)
    seen = sipp.finish(uas, timeout=5)
    invites = seen.received_requests("INVITE")
    assert uac.returncode == 0 and len(invites) == 1, uac.describe() + seen.describe()
    sent = next(t for t, m in uac.sent() if m.startswith("INVITE "))
    final = next(t for t, m in uac.received() if m.startswith("SIP/2.0 200 "))
    return uac.finals(), header_values(invites[0], "Identity"), final - sent


def _connections(lab: Lab) -> int:
    return lab.kamailio.log().count(f"Connected to host 127.0.0.1:{lab.stird.jsonrpc_port}")


def test_stird_restarted_while_kamailio_sends(lab: Lab, tmp_path: Path) -> None:
    sipp = Sipp(tmp_path)
    try:
        finals, identity, _ = outgoing_call(lab, sipp)
        assert finals == [200] and len(identity) >= 1
        lab.stird.stop()
        wait_until("Kamailio noticing stird is gone",
                   lambda: "Connection error for 127.0.0.1" in lab.kamailio.log(), 5)  # fmt: skip
        finals, identity, delay = outgoing_call(lab, sipp)  # fail-open: relayed unsigned
        assert (finals, identity) == ([200], [])
        assert delay < TIMEOUT_MS / 1000 + 1.0  # no hang beyond the configured wait
        before = _connections(lab)
        lab.stird.start()  # same ports
        wait_until("janssonrpcc reconnecting", lambda: _connections(lab) > before, 15)
        finals, identity, _ = outgoing_call(lab, sipp)
        assert finals == [200] and len(identity) >= 1
    finally:
        sipp.stop_all()


def test_kamailio_restarted_while_stird_runs(lab: Lab, tmp_path: Path) -> None:
    sipp = Sipp(tmp_path)
    try:
        lab.kamailio.stop()
        lab.kamailio.proc = None
        log = lab.kamailio.dir / "kamailio.log"
        log.rename(log.with_suffix(".log.1"))  # readiness is read from a fresh log
        if lab.kamailio.rpc_socket.exists():
            lab.kamailio.rpc_socket.unlink()
        lab.kamailio.start()
        finals, identity, _ = outgoing_call(lab, sipp)
        assert finals == [200] and len(identity) >= 1
        assert lab.stird.proc is not None and lab.stird.proc.alive()
    finally:
        sipp.stop_all()
