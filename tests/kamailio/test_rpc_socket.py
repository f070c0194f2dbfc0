"""stird's jsonrpcs datagram client against a real Kamailio: answers reach the
abstract-namespace reply sockets (Kamailio replies from an unbound socket to the sender's
address), and a burst of concurrent calls completes."""

from __future__ import annotations

import asyncio

from stird.adapters.kamailio_rpc import KamailioRpc, KamailioTarget
from tests.kamailio.harness import Lab


async def test_concurrent_calls_over_the_real_datagram_socket(lab: Lab) -> None:
    rpc = KamailioRpc(KamailioTarget(socket_path=str(lab.kamailio.rpc_socket), timeout=2.0))
    try:
        answers = await asyncio.gather(*(rpc.call("dlg.stats_active") for _ in range(50)))
        assert all(isinstance(a, dict) and "all" in a for a in answers), answers[:3]
        version = await rpc.call("core.version")
        assert "kamailio" in str(version).lower()
    finally:
        await rpc.close()
