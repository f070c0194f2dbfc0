"""Netstring framing and the JSON-RPC transport Kamailio's janssonrpcc speaks
(../shared/kamailio/README.md §3: several requests per read, split reads, any order,
integer ids echoed, a framing error closes the connection)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stird.adapters.jsonrpc import Dispatcher
from stird.adapters.netstring import FramingError, NetstringDecoder, NetstringServer, encode
from tests.listen_check import BURST, queued_connections


@pytest.mark.parametrize(
    ("chunks", "messages"),
    [
        ([b"5:hello,"], [b"hello"]),
        ([b"5:hel", b"lo,3:abc,"], [b"hello", b"abc"]),
        ([b"0:,"], [b""]),
        ([b"1", b"2:", b"123456789012", b","], [b"123456789012"]),
    ],
)
def test_decoder(chunks: list[bytes], messages: list[bytes]) -> None:
    decoder = NetstringDecoder()
    got = [m for chunk in chunks for m in decoder.feed(chunk)]
    assert got == messages


@pytest.mark.parametrize(
    "data", [b"oops5:hello,", b"05:hello,", b"5:hello;", b"1234567890:", b"x", b"9999999:"]
)
def test_decoder_framing_errors(data: bytes) -> None:
    with pytest.raises(FramingError):
        NetstringDecoder(max_message=1 << 20).feed(data)


@given(st.lists(st.binary(max_size=50), max_size=5), st.integers(1, 7))
def test_decoder_round_trip_any_split(messages: list[bytes], step: int) -> None:
    wire = b"".join(encode(m) for m in messages)
    decoder = NetstringDecoder()
    got = [m for i in range(0, len(wire), step) for m in decoder.feed(wire[i : i + step])]
    assert got == messages


@given(st.binary(max_size=200))
def test_decoder_raises_only_framing_errors(data: bytes) -> None:
    with contextlib.suppress(FramingError):
        NetstringDecoder(max_message=1000).feed(data)


async def echo_slowly(params: Any) -> Any:
    await asyncio.sleep(params.get("delay", 0))
    return params


@pytest.fixture
async def server() -> Any:
    srv = NetstringServer(Dispatcher({"echo": echo_slowly}).handle)
    host, port = await srv.start("127.0.0.1", 0)
    yield host, port
    await srv.close()


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[Any]:
    decoder = NetstringDecoder()
    out: list[Any] = []
    while len(out) < count:
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "connection closed early"
        out.extend(json.loads(m) for m in decoder.feed(data))
    return out


def request(id_: Any, **params: Any) -> bytes:
    return encode(
        json.dumps({"id": id_, "jsonrpc": "2.0", "method": "echo", "params": params}).encode()
    )


async def test_batch_in_one_write_answered_out_of_order(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(request(2, delay=0.2) + request(3, delay=0.0) + request(4, delay=0.1))
    answers = await read_answers(reader, 3)
    assert [a["id"] for a in answers] == [3, 4, 2]  # each goes out as soon as it is ready
    assert all(a["jsonrpc"] == "2.0" and "result" in a for a in answers)
    writer.close()


async def test_split_request_and_notifications(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    note = encode(b'{"jsonrpc":"2.0","method":"echo","params":{}}')
    wire = note + request(7, x=1)
    for i in range(len(wire)):
        writer.write(wire[i : i + 1])
        await writer.drain()
    (answer,) = await read_answers(reader, 1)
    assert answer == {"jsonrpc": "2.0", "result": {"x": 1}, "id": 7}
    writer.close()


async def test_errors_keep_the_integer_id(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(encode(b'{"id":9,"jsonrpc":"2.0","method":"nope"}'))
    (answer,) = await read_answers(reader, 1)
    assert answer["id"] == 9 and answer["error"]["code"] == -32601
    writer.close()


async def test_framing_error_closes_the_connection(server: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*server)
    writer.write(b"oops146:{},")
    assert await asyncio.wait_for(reader.read(100), 5) == b""


async def test_idle_peer_and_early_close_free_the_server(server: tuple[str, int]) -> None:
    for _ in range(20):
        _, writer = await asyncio.open_connection(*server)
        writer.write(b'12:{"id":1')  # half a request, then gone
        writer.close()
    reader, writer = await asyncio.open_connection(*server)
    writer.write(request(1))
    assert (await read_answers(reader, 1))[0]["id"] == 1
    writer.close()


async def test_accept_queue_holds_a_burst_of_connections(server: Any) -> None:
    _, port = server
    assert queued_connections(port) == BURST  # asyncio's default backlog held 101
