"""Fault injection, certificate server (issue #9): the ``x5u`` server of an inbound call is
slow, down, resets the connection, trickles bytes forever, or sends an endless body.
Verification answers 436 Bad Identity Info (RFC 8224 §6.2 step 3, the fetcher's error map)
within ``[verify] fetch_timeout`` + a margin, and the daemon keeps answering meanwhile."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from stird.wiring.config import VerifyConfig
from tests.conftest import Signer
from tests.faults.helpers import (
    CALLEE,
    CALLER,
    Handler,
    free_port,
    identity,
    post,
    raw_server,
    running,
    server_config,
    signer_for,
    verify_body,
    within,
)

FETCH_TIMEOUT = 0.3
LAB = {"allow_http": True, "allow_networks": ("127.0.0.0/8",)}
PEM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\n"


async def _request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    await asyncio.Event().wait()  # never answers


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(PEM_HEAD + b"Content-Length: 4000\r\n\r\n-----BEGIN CERTIFICATE-----\nMIIB")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST mid-body


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One byte every 20 ms for ever: no per-read timeout ever fires."""
    await _request(reader)
    writer.write(PEM_HEAD + b"Content-Length: 60000\r\n\r\n")
    while True:
        writer.write(b"A")
        await writer.drain()
        await asyncio.sleep(0.02)


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked body that never ends, as fast as the client reads."""
    await _request(reader)
    writer.write(PEM_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"4000\r\n" + b"A" * 0x4000 + b"\r\n"
    while True:
        writer.write(chunk)
        await writer.drain()


async def huge_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    writer.write(PEM_HEAD + b"Content-Length: 1000000000\r\n\r\n")
    await writer.drain()
    await asyncio.Event().wait()


@asynccontextmanager
async def nobody() -> AsyncIterator[int]:
    yield free_port()  # connection refused


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        (slow, "cannot fetch certificate: timeout"),
        (None, "cannot fetch certificate: connection failed"),
        (reset, "cannot fetch certificate: HTTP failure"),
        (trickle, "cannot fetch certificate: timeout"),
        (endless, "cannot fetch certificate: larger than 65536 bytes"),
        (huge_length, "cannot fetch certificate: larger than 65536 bytes"),
    ],
    ids=["slow", "down", "reset", "trickle", "endless", "huge-length"],
)
async def test_bad_certificate_server_gives_436_within_the_budget(
    tmp_path: Path, signer: Signer, fault: Handler | None, detail: str
) -> None:
    verify = VerifyConfig(fetch_timeout=FETCH_TIMEOUT, deadline=2.0, **LAB)  # type: ignore[arg-type]
    config = replace(server_config(tmp_path), verify=verify)
    serving = nobody() if fault is None else raw_server(fault)
    async with serving as port, running(config) as (_, base):
        auth = signer_for(signer.key, signer.cert, f"http://127.0.0.1:{port}/cert.pem")
        answer, _ = await within(
            FETCH_TIMEOUT, post(base, "/v1/verify", verify_body(identity(auth)))
        )
        assert (answer["verdict"], answer["code"], answer["action"]) == ("invalid", 436, "reject")
        assert (answer["detail"], answer["failed_check"]) == (detail, "credential")
        # the daemon is still there: it signs, and verifies its own signature
        signed = await post(base, "/v1/sign", {"orig": CALLER, "dest": [CALLEE], "ppt": "shaken"})
        again = await post(base, "/v1/verify", verify_body(signed["identity"]))
        assert (again["verdict"], again["code"]) == ("valid", None)


async def test_a_stalled_fetch_does_not_hold_other_requests(tmp_path: Path, signer: Signer) -> None:
    """While one verification waits on a server that holds the connection, signing and
    other verifications are answered; releasing the server ends the waiting one with 436."""
    held, release = asyncio.Event(), asyncio.Event()

    async def holding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        held.set()
        await release.wait()  # then close without an answer

    verify = VerifyConfig(fetch_timeout=5.0, deadline=5.0, **LAB)  # type: ignore[arg-type]
    config = replace(server_config(tmp_path), verify=verify)
    async with raw_server(holding) as port, running(config) as (_, base):
        auth = signer_for(signer.key, signer.cert, f"http://127.0.0.1:{port}/cert.pem")
        waiting = asyncio.ensure_future(post(base, "/v1/verify", verify_body(identity(auth))))
        await asyncio.wait_for(held.wait(), 5)
        for _ in range(5):
            signed = await post(base, "/v1/sign", {"orig": CALLER, "dest": [CALLEE]})
            assert (await post(base, "/v1/verify", verify_body(signed["identity"])))["verdict"] == (
                "valid")  # fmt: skip
        assert not waiting.done()
        release.set()
        answer = await asyncio.wait_for(waiting, 5)
        assert (answer["code"], answer["detail"]) == (436, "cannot fetch certificate: HTTP failure")
