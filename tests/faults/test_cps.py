"""Fault injection, Call Placement Service (issue #9, RFC 8816 §8): the CPS is slow (holds
the request), down (connection refused) or resets the connection. Signing with ``"oob":
true`` still answers with its in-band Identity and reports the failed store; the
terminating side's retrieval gives up within ``[oob] timeout`` and the call gets the
in-band verdict the configuration asks for (continue, or 428 with require_identity)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path

import pytest

from stird.wiring.config import OobConfig, VerifyConfig
from tests.faults.helpers import (
    CALLEE,
    CALLER,
    Handler,
    free_port,
    get_text,
    metric,
    post,
    raw_server,
    running,
    server_config,
    verify_body,
    within,
)
from tests.faults.test_certserver import nobody, reset, slow

TIMEOUT = 0.3
LAB = {"allow_http": True, "allow_networks": ("127.0.0.0/8",)}


def _serving(fault: Handler | None) -> AbstractAsyncContextManager[int]:
    return nobody() if fault is None else raw_server(fault)


@pytest.mark.parametrize(
    ("fault", "result", "error"),
    [
        (slow, "timeout", f"CPS did not answer within {TIMEOUT:g} s"),
        (None, "error", "connection failed"),
        (reset, "error", "HTTP failure"),
    ],
    ids=["slow", "down", "reset"],
)
@pytest.mark.parametrize("require_identity", [False, True], ids=["continue", "require"])
async def test_cps_fault_costs_at_most_the_bound(
    tmp_path: Path, fault: Handler | None, result: str, error: str, require_identity: bool
) -> None:
    async with _serving(fault) as port:
        oob = OobConfig(cps=f"http://127.0.0.1:{port}", timeout=TIMEOUT, **LAB)  # type: ignore[arg-type]
        verify = VerifyConfig(require_identity=require_identity, **LAB)  # type: ignore[arg-type]
        config = replace(server_config(tmp_path), oob=oob, verify=verify)
        async with running(config) as (_, base):
            body = {"orig": CALLER, "dest": [CALLEE], "ppt": "shaken", "oob": True}
            signed, _ = await within(TIMEOUT, post(base, "/v1/sign", body))
            assert len(signed["identity"]) == 1  # the in-band result is there
            assert signed["oob"]["stored"] is False and error in signed["oob"]["error"]
            verdict, _ = await within(TIMEOUT, post(base, "/v1/verify", verify_body([])))
            expected = (428, "reject") if require_identity else (None, "continue")
            assert (verdict["code"], verdict["action"], verdict["oob"]) == (*expected, False)
            # in-band verification is untouched by the CPS being away
            inband = await post(base, "/v1/verify", verify_body(signed["identity"]))
            assert (inband["verdict"], inband["oob"]) == ("valid", False)
            text = await get_text(base, "/metrics")
    for op in ("publish", "retrieve"):
        sample = f'stird_cps_operations_total{{op="{op}",result="{result}"}}'
        assert metric(text, sample) == 1.0, text


async def test_publish_resumes_when_the_cps_comes_back(tmp_path: Path) -> None:
    """Down, then a CPS appears on the same port: the next publication is stored."""
    from aiohttp import web

    from stird.wiring.cps_app import build_cps

    port = free_port()
    oob = OobConfig(cps=f"http://127.0.0.1:{port}", timeout=TIMEOUT, **LAB)  # type: ignore[arg-type]
    config = replace(server_config(tmp_path), oob=oob)
    body = {"orig": CALLER, "dest": [CALLEE], "ppt": "shaken", "oob": True}
    async with running(config) as (daemon, base):
        first = await post(base, "/v1/sign", body)
        assert first["oob"]["stored"] is False
        parts = build_cps(server_config(tmp_path), daemon.config.server.state_dir)
        runner = web.AppRunner(parts.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            second = await asyncio.wait_for(post(base, "/v1/sign", body), 5)
            assert second["oob"]["stored"] is True
        finally:
            await runner.cleanup()
            await parts.close()
