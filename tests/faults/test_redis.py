"""Fault injection, shared store (issue #9): Redis killed or frozen mid-run under two stird
service stacks sharing it (FallbackStore over RedisStore, the daemon's own wiring from
``build_runtime``). Requests keep succeeding on the local store within the store's
timeout, ``stird_store_fallback_total`` counts the fallback, and once Redis is back (and
the backoff is over) a PASSporT replayed on the other instance is refused again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from stird.adapters.metrics import Metrics
from stird.adapters.store_memory import MemoryStore
from stird.adapters.store_redis import RedisStore
from stird.core.tn import parse_cli_id
from stird.core.verdict import SipFacts
from stird.services.authentication import SignInput
from stird.services.stores import FallbackStore
from stird.wiring.app import Built, build_runtime
from stird.wiring.config import StoreConfig
from tests.faults.helpers import CALLEE, CALLER, get_text, post, running, server_config, within
from tests.fixtures_redis import _stop, _wait_ready, free_port, redis_server

STORE_TIMEOUT = 0.3
BACKOFF = 5.0


@dataclass
class OwnRedis:
    """A redis-server of this test alone (the session's one is shared by other tests)."""

    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [redis_server(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.dir)]  # fmt: skip
        log = self.dir / "redis.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _wait_ready(self.proc, self.port, log)

    def fault(self, kind: str) -> None:
        assert self.proc is not None
        if kind == "killed":
            self.proc.kill()
            self.proc.wait()
        else:
            os.kill(self.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing

    def recover(self, kind: str) -> None:
        assert self.proc is not None
        if kind == "killed":
            self.start()  # a fresh, empty server on the same port
        else:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            _stop(self.proc)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path, free_port())
    server.start()
    yield server
    server.stop()


class Instance:
    """One stird's services over a FallbackStore on the shared Redis, on a test clock."""

    def __init__(self, tmp: Path, url: str, prefix: str, clock: list[float]) -> None:
        config = replace(server_config(tmp), store=StoreConfig(redis=url))
        shared = RedisStore(url, prefix=prefix, timeout=STORE_TIMEOUT)
        self.store = FallbackStore(shared, MemoryStore(), backoff=BACKOFF, clock=lambda: clock[0])
        self.built: Built = build_runtime(
            config, self.store, "http://127.0.0.1:1", int(time.time())
        )
        self.metrics = Metrics()
        self.metrics.watch_store(lambda: self.store.failures)

    def sign(self) -> tuple[str, ...]:
        request = SignInput(orig=parse_cli_id(CALLER), dest=(parse_cli_id(CALLEE),))
        return self.built.runtime.auth.sign(request).identity

    async def verify(self, identity: tuple[str, ...], call_id: str) -> tuple[str, int | None]:
        facts = SipFacts(identity=identity, from_=f"<sip:{CALLER}@a.example;user=phone>",
                         to=f"<tel:{CALLEE}>", call_id=call_id)  # fmt: skip
        verdict, _ = await within(STORE_TIMEOUT * 4, self.built.runtime.verifier.verify(facts))
        return verdict.verdict.value, verdict.code

    def fallbacks(self) -> float:
        text = self.metrics.render().decode()
        line = next(x for x in text.splitlines() if x.startswith("stird_store_fallback_total "))
        return float(line.split()[1])

    async def close(self) -> None:
        await self.built.close()
        await self.store.close()


@pytest.mark.parametrize("kind", ["killed", "frozen"])
async def test_redis_down_mid_run_falls_back_locally_and_recovers(
    tmp_path: Path, own_redis: OwnRedis, kind: str
) -> None:
    clock = [0.0]
    prefix = f"faults:{uuid.uuid4().hex}:"
    a = Instance(tmp_path, own_redis.url, prefix, clock)
    b = Instance(tmp_path, own_redis.url, prefix, clock)  # same state dir: same credential
    try:
        first = a.sign()
        assert await a.verify(first, "call-1") == ("valid", None)
        assert await b.verify(first, "call-2") == ("invalid", 438)  # replay across instances

        own_redis.fault(kind)
        second = a.sign()
        assert await a.verify(second, "call-3") == ("valid", None)  # local store
        assert await a.verify(second, "call-4") == ("invalid", 438)  # replay refused locally
        assert await b.verify(second, "call-5") == ("valid", None)  # not shared meanwhile
        assert (a.fallbacks(), b.fallbacks()) == (1.0, 1.0)
        assert a.store.failures == 1  # inside the backoff Redis is left alone

        own_redis.recover(kind)
        clock[0] += BACKOFF
        third = a.sign()
        assert await a.verify(third, "call-6") == ("valid", None)
        assert await b.verify(third, "call-7") == ("invalid", 438)  # shared again
        assert (a.fallbacks(), b.fallbacks()) == (1.0, 1.0)
    finally:
        await a.close()
        await b.close()


async def test_daemon_keeps_answering_with_redis_killed(
    tmp_path: Path, own_redis: OwnRedis
) -> None:
    config = replace(server_config(tmp_path), store=StoreConfig(redis=own_redis.url))
    body = {"orig": CALLER, "dest": [CALLEE], "ppt": "shaken"}
    verify = {"from": f"<sip:{CALLER}@a.example;user=phone>", "to": f"<tel:{CALLEE}>"}
    async with running(config) as (daemon, base):
        signed = await post(base, "/v1/sign", body)
        ok = await post(
            base, "/v1/verify", {**verify, "identity": signed["identity"], "call_id": "1"}
        )
        assert ok["verdict"] == "valid"
        own_redis.fault("killed")
        for call_id in ("2", "3"):
            signed = await post(base, "/v1/sign", body)
            request = {**verify, "identity": signed["identity"], "call_id": call_id}
            answer, _ = await within(1.0, post(base, "/v1/verify", request))
            assert answer["verdict"] == "valid"
        assert isinstance(daemon.store, FallbackStore) and daemon.store.failures == 1
        # the in-process CPS keeps its entries in the same Redis: publishing fails cleanly
        published, _ = await within(1.0, post(base, "/v1/sign", {**body, "oob": True}))
        assert published["identity"] and published["oob"]["stored"] is False
        assert published["oob"]["error"] == "CPS answered HTTP 503"
        exported = await get_text(base, "/metrics")
        assert "stird_requests_total" in exported
        assert "stird_store_fallback_total 1.0" in exported.splitlines()
