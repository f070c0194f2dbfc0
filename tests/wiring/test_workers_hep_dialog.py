"""[server] workers = 2 with [asterisk] hep and [dialog] policy = "mandatory" (issue 18):
the FastAGI sign session that expects stird's msec Identity to leave Asterisk runs on one
worker, while every HEP copy (Asterisk sends them from one socket) lands on the other.
The connected-identity bookkeeping is shared (stird.adapters.hep_shared.SharedDialogBook),
so the worker taking the copies still tracks the dialog: the callee's backwards msec
confirms it, and its absence within the window gets the call hung up through AMI (a fake
Asterisk manager in a thread of this process)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict

from stird.core.identity import parse_identity
from tests.adapters.test_agi import write_dtls_cert
from tests.adapters.test_hep_asterisk import CALLEE, CALLER, _fix_parties
from tests.asterisk_fakes import FakeAmi, FakeChannel, channel_fields, inbound_env, run_agi
from tests.hep_captures import replayed, set_header, sip_text
from tests.wiring.serve_workers import spawn_serve
from tests.wiring.test_workers import request, until

WINDOW = 1.0  # s: [dialog] window


class AmiThread:
    """A :class:`FakeAmi` serving from its own event loop in a thread."""

    def __init__(self) -> None:
        self.fake = FakeAmi()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)

    def add_channel(self, name: str) -> None:
        def add() -> None:
            self.fake.channels[name] = channel_fields(name, f"stird-{uuid.uuid4().hex}")

        self.loop.call_soon_threadsafe(add)

    def hangups(self) -> list[dict[str, str]]:
        return [a for a in list(self.fake.received) if a.get("Action") == "Hangup"]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Served:
    port: int
    agi: tuple[str, int]
    hep: tuple[str, int]
    run: Path
    ami: AmiThread
    asterisk: socket.socket = field(default_factory=lambda: socket.socket(type=socket.SOCK_DGRAM))

    def samples(self, sample: str, **labels: str) -> dict[int, float]:
        """``sample``{labels} of each worker, from its own counter file."""
        counts: dict[int, float] = {}
        (private,) = self.run.glob("stird-workers-*")
        for path in (private / "metrics").glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                name, found = json.loads(key)[1:3]
                if name == sample and labels.items() <= found.items():
                    counts[pid] = counts.get(pid, 0.0) + value
        return counts

    def send(self, datagram: bytes) -> int:
        """Send from Asterisk's one socket; the PID of the worker that took it."""
        before = self.samples("stird_hep_datagrams_total")  # every result

        def taken() -> int | None:
            after = self.samples("stird_hep_datagrams_total")
            grew = [pid for pid in after if after[pid] > before.get(pid, 0.0)]
            return grew[0] if grew else None

        self.asterisk.sendto(datagram, self.hep)
        pid: int = until(taken, "a worker taking the HEP copy")
        return pid

    def sign_elsewhere(self, taker: int, channel: str) -> str:
        """Run the outbound sign route (as the captured dialplan: the phone's channel,
        trunk "trunk") until a session lands on a worker other than ``taker``; the msec
        Identity it returned."""

        def once() -> str | None:
            before = self.samples("stird_requests_total", kind="sign")
            env = inbound_env("sign", agi_channel=channel, agi_callerid=CALLER,
                              agi_extension=CALLEE, agi_arg_1=CALLEE, agi_arg_2=CALLER,
                              agi_arg_3="trunk")  # fmt: skip
            signed = asyncio.run(run_agi(self.agi, FakeChannel(env)))
            identity = signed.variables["STIRD_IDENTITY"]
            assert parse_identity(identity)[0].ppt == "msec", signed.variables
            after = self.samples("stird_requests_total", kind="sign")
            [signer] = [pid for pid in after if after[pid] > before.get(pid, 0.0)]
            return identity if signer != taker else None

        found: str = until(once, "a sign session on the worker without the HEP copies")
        return found

    def outcomes(self, outcome: str) -> float:
        return sum(self.samples("stird_msec_dialogs_total", outcome=outcome).values())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hep-dialog-workers")
    ami = AmiThread()
    cert = tmp / "trunk.crt"
    write_dtls_cert(cert)
    config = tmp / "stird.toml"
    config.write_text(
        "[server]\nworkers = 2\n"
        f"[asterisk]\nhep = '127.0.0.1:0'\nami_enabled = true\nami_port = {ami.fake.port}\n"
        f"ami_secret = '{ami.fake.secret}'\ndtls_certs = {{ trunk = '{cert}' }}\n"
        f"[dialog]\npolicy = 'mandatory'\nwindow = {WINDOW}\n"
    )
    proc, port, run = spawn_serve(tmp, config)
    try:
        workers: dict[int, Any] = {}

        def both_serving() -> bool:
            try:
                status, doc, pid = request(port, "/healthz")
            except OSError:
                assert proc.poll() is None
                return False
            if status == 200 and doc["ami"]["connected"]:
                workers[pid] = doc
            return len(workers) == 2

        until(both_serving, "two workers serving, each logged in to AMI", timeout=60)
        health = next(iter(workers.values()))
        agi_host, agi_port = health["agi"]["address"].rsplit(":", 1)
        hep_host, hep_port = health["hep"]["address"].rsplit(":", 1)
        served = Served(port, (agi_host, int(agi_port)), (hep_host, int(hep_port)), run, ami)
        yield served
        served.asterisk.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=10)[1]
        ami.stop()
    assert "Traceback" not in stderr, stderr
    assert "running one worker" not in stderr, stderr


def call(identity: str) -> tuple[str, str, str]:
    """Captured files 12 (Asterisk's INVITE to the trunk, with stird's Identity) and 14
    (the trunk's 200 OK, From/To the signed numbers) under a fresh Call-ID."""
    call_id = f"{uuid.uuid4()}@127.0.0.1"
    invite = set_header(set_header(sip_text("12"), "Identity", identity), "Call-ID", call_id)
    answer = set_header(_fix_parties(sip_text("14")), "Call-ID", call_id)
    return call_id, invite, answer


def test_the_callee_proof_confirms_on_the_worker_that_did_not_sign(served: Served) -> None:
    taker = served.send(replayed("13"))  # a 100 Trying: which worker takes Asterisk's copies
    identity = served.sign_elsewhere(taker, "PJSIP/phone-00000001")
    _, invite, answer = call(identity)
    assert served.send(replayed("12", invite)) == taker
    sdp = answer.split("\r\n\r\n", 1)[1]
    status, out, _ = request(served.port, "/v1/sign", {"orig": CALLEE, "dest": [CALLER],
                                                       "sdp": sdp, "ppt": "msec"})  # fmt: skip
    assert status == 200, out
    [msec] = [v for v in out["identity"] if "ppt=msec" in v]
    proof = set_header(set_header(answer, "Identity", msec), "Date", out["date"])
    confirmed = served.outcomes("confirmed")
    assert served.send(replayed("14", proof)) == taker
    until(lambda: served.outcomes("confirmed") == confirmed + 1, "the dialog confirmed")
    assert served.samples("stird_hep_backwards_total", result="valid").keys() == {taker}


def test_no_callee_proof_hangs_up_through_ami(served: Served) -> None:
    channel = "PJSIP/phone-00000002"
    served.ami.add_channel(channel)
    taker = served.send(replayed("13"))
    identity = served.sign_elsewhere(taker, channel)
    _, invite, answer = call(identity)
    assert served.send(replayed("12", invite)) == taker
    timed_out = served.outcomes("timed-out")
    assert served.send(replayed("14", answer)) == taker  # the 200 OK without Identity
    hangups = until(served.ami.hangups, "a Hangup through AMI", timeout=WINDOW + 20)
    assert [(h["Channel"], h["Cause"]) for h in hangups] == [(channel, "21")]
    assert served.outcomes("timed-out") == timed_out + 1  # one worker's timer ended it
