"""Issue 18, end to end: stird.cfg's dialog events travel on their own janssonrpcc
connection, never between the sign/verify requests.

A ``stir.dialog`` notification gets no answer, so on a request connection its ACK would
be left to the peer's delayed-ACK timer, and janssonrpcc (no TCP_NODELAY) would hold the
next ``stir.sign`` behind it. A recording TCP relay sits between Kamailio and stird: it
forwards every byte untouched and notes, per connection, the JSON-RPC methods Kamailio
sent. The assertions are about where the messages go, not about timing.

The events exist only for stird's msec dialog policy: stird.cfg sends them when the
operator defines STIRD_DIALOG_POLICY (with [dialog] policy), never by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stird.adapters.netstring import NetstringDecoder
from tests.kamailio.harness import (
    HOST,
    Kamailio,
    Lab,
    Sipp,
    free_ports,
    header_values,
    new_stird,
    stop_lab,
    wait_until,
)

REQUEST_CONNECTIONS = 4  # stird.cfg: four server lines of group "stird"
EVENT_CONNECTIONS = 1  # and one of group "dlgev"


class RecordingRelay:
    """127.0.0.1:port -> stird's netstring port; methods seen per client connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.methods: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> RecordingRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("relay did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        self._loop.run_forever()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            index = len(self.methods)
            self.methods[index] = []
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target_port)
        decoder = NetstringDecoder()

        def note(data: bytes) -> None:
            for payload in decoder.feed(data):
                with self._lock:
                    self.methods[index].append(str(json.loads(payload).get("method")))

        pump = [
            asyncio.create_task(self._pump(reader, up_writer, note)),
            asyncio.create_task(self._pump(up_reader, writer, None)),
        ]
        self._tasks.update(pump)
        await asyncio.wait(pump, return_when=asyncio.FIRST_COMPLETED)
        for task in pump:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, note: object
    ) -> None:
        while data := await reader.read(65536):
            if callable(note):
                note(data)
            writer.write(data)
            await writer.drain()

    def snapshot(self) -> dict[int, list[str]]:
        with self._lock:
            return {k: list(v) for k, v in self.methods.items()}

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in self._tasks:
                task.cancel()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _relayed_lab(where: Path, defines: dict[str, str]) -> tuple[Lab, RecordingRelay]:
    stird = new_stird(where / "stird")
    relay = RecordingRelay(stird.jsonrpc_port).start()
    base = free_ports(5)
    # Kamailio talks to the relay; the harness's readiness check looks for its port
    seen_by_kamailio = dataclasses.replace(stird, jsonrpc_port=relay.port)
    kam = Kamailio(where / "kamailio", sip_port=base, rpc_port=base + 1,
                   stird=seen_by_kamailio, next_hop_port=base + 2,
                   outbound_port=base + 3, defines=defines)  # fmt: skip
    try:
        kam.start()
    except BaseException:
        kam.stop()
        relay.stop()
        stird.stop()
        raise
    return Lab(stird, kam, base + 2, base + 3, base + 4), relay


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, RecordingRelay]]:
    """stird.cfg with the dialog events on (STIRD_DIALOG_POLICY, set with [dialog] policy)."""
    lab, relay = _relayed_lab(tmp_path_factory.mktemp("kamev"), {"STIRD_DIALOG_POLICY": "1"})
    yield lab, relay
    stop_lab(lab)
    relay.stop()


@pytest.fixture(scope="module")
def relayed_default(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Lab, RecordingRelay]]:
    """stird.cfg as shipped: no STIRD_DIALOG_POLICY, like stird's default [dialog] policy."""
    lab, relay = _relayed_lab(tmp_path_factory.mktemp("kamnoev"), {})
    yield lab, relay
    stop_lab(lab)
    relay.stop()


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    runner.stop_all()


def counter(lab: Lab, name: str) -> int:
    answer = lab.kamailio.kamcli("rpc", "cnt.get", "script", name)
    return int(answer["result"])


def test_dialog_events_travel_on_their_own_connection(
    relayed: tuple[Lab, RecordingRelay], sipp: Sipp
) -> None:
    lab, relay = relayed
    wait_until(
        "every janssonrpcc connection open",
        lambda: len(relay.snapshot()) >= REQUEST_CONNECTIONS + EVENT_CONNECTIONS,
        10,
    )
    for _ in range(3):  # three signed calls, each answered and hung up
        uas = sipp.uas(lab.uas_port)
        uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port)
        uas_run = sipp.finish(uas)
        assert uac.finals() == [200], uac.describe()
        [invite] = uas_run.received_requests("INVITE")
        assert header_values(invite, "Identity"), invite  # signed (msec + shaken)

    def events_seen() -> dict[int, list[str]] | None:
        seen = relay.snapshot()
        count = sum(m.count("stir.dialog") for m in seen.values())
        return seen if count >= 6 else None  # answered + ended per call

    seen = wait_until("the six dialog events at stird", events_seen, 10)
    event_conns = {c for c, methods in seen.items() if "stir.dialog" in methods}
    sign_conns = {c for c, methods in seen.items() if "stir.sign" in methods}
    assert len(event_conns) == 1, seen
    assert sign_conns and not sign_conns & event_conns, seen
    [events] = [seen[c] for c in event_conns]
    assert set(events) == {"stir.dialog"}, seen  # no request ever waits behind an event
    assert len(seen) == REQUEST_CONNECTIONS + EVENT_CONNECTIONS, seen
    assert sum(m.count("stir.sign") for m in seen.values()) == 3, seen
    assert counter(lab, "stird_fail_open") == 0


def test_no_dialog_events_unless_the_operator_turns_them_on(
    relayed_default: tuple[Lab, RecordingRelay], sipp: Sipp
) -> None:
    """Without STIRD_DIALOG_POLICY: no event connection and no stir.dialog, ever."""
    lab, relay = relayed_default
    wait_until(
        "the request connections open",
        lambda: len(relay.snapshot()) >= REQUEST_CONNECTIONS,
        10,
    )
    for _ in range(4):  # each call answered and hung up (dialog:start and dialog:end fire)
        uas = sipp.uas(lab.uas_port)
        uac = sipp.uac("uac_sign.xml", lab.outbound_port, lab.sip_port)
        uas_run = sipp.finish(uas)
        assert uac.finals() == [200], uac.describe()
        [invite] = uas_run.received_requests("INVITE")
        assert header_values(invite, "Identity"), invite

    def signs_seen() -> dict[int, list[str]] | None:
        seen = relay.snapshot()
        return seen if sum(m.count("stir.sign") for m in seen.values()) >= 4 else None

    # the last sign went through the I/O process after the earlier calls' hang-ups
    seen = wait_until("the four signs at stird", signs_seen, 10)
    assert all(set(methods) <= {"stir.sign"} for methods in seen.values()), seen
    assert len(seen) == REQUEST_CONNECTIONS, seen
    assert counter(lab, "stird_fail_open") == 0
