"""[server] workers = 2 with [asterisk] hep (issue 18): every worker runs the HEP
collector on the one UDP port, the SDP offers are shared (stird.adapters.hep_shared), so
a FastAGI verify session finds its offer whichever worker took Asterisk's copy.

Asterisk sends every copy from one socket, so the kernel gives all of them to one worker
(the hash of one flow); the sessions spread over both. Which worker did what is read from
each worker's own metrics file (prometheus-client's multiprocess ``counter_<pid>.db``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from stird.adapters.hep import MAX_SDP
from stird.adapters.hep_shared import SharedSdpStore
from stird.wiring.cli import main
from tests.adapters.test_hep_asterisk import CALLEE, CALLER, agi_channel
from tests.asterisk_fakes import FakeChannel, run_agi
from tests.hep_captures import replayed, set_header, sip_text
from tests.wiring.serve_workers import spawn_serve
from tests.wiring.test_workers import alive, on_each_worker, request, until

PASSWORD = "s3cret"  # capture_password of the captured variant B (file 32)


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    agi: tuple[str, int]
    hep: tuple[str, int]
    run: Path  # RUNTIME_DIRECTORY: the supervisor's private directory is in it
    asterisk: socket.socket  # Asterisk's one HEP socket

    @property
    def private(self) -> Path:
        (folder,) = self.run.glob("stird-workers-*")
        return folder

    def per_worker(self, sample: str, result: str) -> dict[int, float]:
        """``sample``{result=...} of each worker, from its own counter file."""
        counts: dict[int, float] = {}
        for path in (self.private / "metrics").glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
                name, labels = json.loads(key)[1:3]
                if name == sample and labels.get("result") == result:
                    counts[pid] = counts.get(pid, 0.0) + value
        return counts

    def total(self, sample: str, result: str) -> float:
        return sum(self.per_worker(sample, result).values())

    def shared(self) -> SharedSdpStore:
        hep = self.private / "hep"
        return SharedSdpStore(hep / "offers", hep / "index")

    def msec_call(self, name: str = "32") -> tuple[str, str]:
        """A captured inbound INVITE with a fresh Call-ID and an msec Identity stird signs
        over its SDP offer; (Call-ID, message)."""
        call_id = f"{uuid.uuid4()}@127.0.0.1"
        invite = set_header(sip_text(name), "Call-ID", call_id)
        sdp = invite.split("\r\n\r\n", 1)[1]
        status, out, _ = request(self.port, "/v1/sign", {"orig": CALLER, "dest": [CALLEE],
                                                         "sdp": sdp, "ppt": "msec"})  # fmt: skip
        assert status == 200, out
        [msec] = [v for v in out["identity"] if "ppt=msec" in v]
        return call_id, set_header(set_header(invite, "Identity", msec), "Date", out["date"])

    def verify(self, message: str) -> FakeChannel:
        return asyncio.run(run_agi(self.agi, agi_channel(message)))

    def send_counted(self, datagrams: list[bytes], senders: int = 1) -> None:
        """Send, from ``senders`` sockets in turn, and wait until the workers counted them
        (in batches: a burst larger than the receive buffers would be dropped)."""
        socks = [self.asterisk] + [
            socket.socket(type=socket.SOCK_DGRAM) for _ in range(senders - 1)
        ]
        try:
            for start in range(0, len(datagrams), 100):
                batch = datagrams[start : start + 100]
                expected = self.counted() + len(batch)
                for n, datagram in enumerate(batch):
                    socks[n % len(socks)].sendto(datagram, self.hep)
                self._wait_counted(expected)
        finally:
            for sock in socks[1:]:
                sock.close()

    def _wait_counted(self, expected: float) -> None:
        until(lambda: self.counted() >= expected, "the workers counting the datagrams")

    def counted(self) -> float:
        results = ("accepted", "duplicate", "decode-error", "auth-failed", "not-sip")
        return sum(self.total("stird_hep_datagrams_total", r) for r in results)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hep-workers")
    key, cert = tmp / "keys" / "private.pem", tmp / "cert.pem"
    assert main(["keygen", "--out", str(tmp / "keys")]) == 0
    assert main(["cert", "--key", str(key), "--tn", CALLER, "--out", str(cert)]) == 0
    config = tmp / "stird.toml"
    config.write_text(
        "[server]\nworkers = 2\n"
        f"[[credential]]\nname = 'main'\nkey = '{key}'\ncert = '{cert}'\ntns = ['{CALLER}']\n"
        f"[asterisk]\nhep = '127.0.0.1:0'\nhep_password = '{PASSWORD}'\nhep_wait = 1.0\n"
    )
    proc, port, run = spawn_serve(tmp, config)
    asterisk = socket.socket(type=socket.SOCK_DGRAM)
    try:

        def healthy() -> dict[str, object] | None:
            try:
                status, doc, _ = request(port, "/healthz")
            except OSError:
                return None
            return doc if status == 200 and isinstance(doc, dict) else None

        health = until(healthy, "the workers serving", timeout=60)
        agi_host, agi_port = health["agi"]["address"].rsplit(":", 1)
        hep_host, hep_port = health["hep"]["address"].rsplit(":", 1)
        assert int(hep_port) != 0  # port 0: the supervisor's reservation picked one
        yield Served(proc, port, (agi_host, int(agi_port)), (hep_host, int(hep_port)), run,
                     asterisk)  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        asterisk.close()
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=10)[1]
    assert "Traceback" not in stderr, stderr
    assert "running one worker" not in stderr, stderr


def test_every_worker_finds_the_offer_whichever_worker_took_the_copy(served: Served) -> None:
    workers = set(on_each_worker(served.port, "/healthz", None))
    hep_addresses = {doc["hep"]["address"] for _, doc in
                     on_each_worker(served.port, "/healthz", None).values()}  # fmt: skip
    assert hep_addresses == {f"{served.hep[0]}:{served.hep[1]}"}  # one port, both workers
    accepted_before = served.per_worker("stird_hep_datagrams_total", "accepted")

    def matched_on_both() -> bool:
        call_id, message = served.msec_call()
        served.send_counted([replayed("32", message)])
        v = served.verify(message).variables
        assert (v["STIRD_VERDICT"], v["STIRD_MKY"], v["STIRD_ACTION"]) == (
            "valid", "checked", "continue"), (call_id, v)  # fmt: skip
        return set(served.per_worker("stird_hep_sdp_total", "match")) >= workers

    until(matched_on_both, "a verify session on each worker finding its SDP", timeout=60)
    accepted = served.per_worker("stird_hep_datagrams_total", "accepted")
    took = {pid for pid in accepted if accepted[pid] > accepted_before.get(pid, 0.0)}
    assert len(took) == 1, accepted  # one flow: one worker took every copy...
    assert served.per_worker("stird_hep_sdp_total", "match").keys() - took  # ...others matched


def test_hostile_copies_on_every_worker(served: Served) -> None:
    store = served.shared()
    try:
        # a wrong capture password, and none at all: dropped, not stored
        failed = served.total("stird_hep_datagrams_total", "auth-failed")
        wrong, message = served.msec_call()
        served.send_counted([replayed("32", message, auth_key=b"not-" + PASSWORD.encode()),
                             replayed("01", message)], senders=2)  # fmt: skip
        assert served.total("stird_hep_datagrams_total", "auth-failed") == failed + 2
        assert store.offer(wrong) is None
        v = served.verify(message).variables  # waits hep_wait (1 s), then the policy
        assert (v["STIRD_VERDICT"], v["STIRD_MKY"]) == ("valid", "unchecked"), v

        # an SDP over the bound: refused (and a legitimate one beside it stored)
        big, message = served.msec_call()
        head, body = message.split("\r\n\r\n", 1)
        body += "a=x-pad:" + "p" * (MAX_SDP - len(body)) + "\r\n"
        oversize = set_header(head + "\r\n\r\n", "Content-Length", str(len(body))) + body
        small, fine = served.msec_call()
        served.send_counted([replayed("32", oversize), replayed("32", fine)])
        assert store.offer(big) is None and store.offer(small) is not None

        # one copy from twenty sockets (spread over the workers): one stored, 19 duplicates
        duplicates = served.total("stird_hep_datagrams_total", "duplicate")
        again, message = served.msec_call()
        served.send_counted([replayed("32", message)] * 20, senders=20)
        assert served.total("stird_hep_datagrams_total", "duplicate") == duplicates + 19
        assert store.offer(again) is not None

        # a flood of distinct Call-IDs from many sockets cannot grow the table
        size = os.path.getsize(store.log.path)
        flood = [replayed("32", set_header(sip_text("32"), "Call-ID", f"flood-{n}@x"))
                 for n in range(5000)]  # fmt: skip
        accepted = served.total("stird_hep_datagrams_total", "accepted")
        served.send_counted(flood, senders=16)
        assert served.total("stird_hep_datagrams_total", "accepted") == accepted + 5000
        assert len(store.index) <= store.index.max_entries == 4096
        assert os.path.getsize(store.log.path) == size
        assert store.offer("flood-4999@x") is not None  # the newest; evicted: soonest to
        # expire among a sample (stird.adapters.store_shm), so not strictly the oldest
        assert sum(store.offer(f"flood-{n}@x") is not None for n in range(5000)) <= 4096
        # and a call after the flood is still checked, on whichever worker
        _, message = served.msec_call()
        served.send_counted([replayed("32", message)])
        assert served.verify(message).variables["STIRD_MKY"] == "checked"
    finally:
        store.close()


def test_a_restarted_worker_binds_the_hep_port_again(served: Served) -> None:
    accepted = served.per_worker("stird_hep_datagrams_total", "accepted")
    _, message = served.msec_call()
    served.send_counted([replayed("32", message)])
    after = served.per_worker("stird_hep_datagrams_total", "accepted")
    [taker] = [pid for pid in after if after[pid] > accepted.get(pid, 0.0)]
    os.kill(taker, signal.SIGKILL)
    until(lambda: not alive(taker), "the killed worker gone", timeout=5)
    answered = set(on_each_worker(served.port, "/healthz", None))
    assert taker not in answered and len(answered) == 2
    deadline = time.monotonic() + 20
    while True:  # Asterisk's copies reach a worker again (the restarted one or the other)
        _, message = served.msec_call()
        served.send_counted([replayed("32", message)])
        v = served.verify(message).variables
        if v["STIRD_MKY"] == "checked" or time.monotonic() > deadline:
            break
    assert v["STIRD_MKY"] == "checked", v
