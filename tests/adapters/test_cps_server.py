"""The CPS over real loopback sockets (RFC 8816 §9): store, list with dummies, fetch one,
key publication, errors, flood control by peer address, aging, and two CPS servers sharing
one real redis-server."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stird.adapters.cps_memory import MemoryCpsStore
from stird.adapters.cps_redis import RedisCpsStore
from stird.adapters.cps_server import add_cps_routes, build_cps_app, client_key
from stird.adapters.store_memory import MemoryStore
from stird.core import certs, cps, oob, oobkeys
from stird.core.oob import DecryptionKey, OobSuite
from stird.core.oobkeys import PublicationPolicy
from stird.services.cps import CpsPolicy, CpsService
from stird.services.keydir import KeyDirectory
from stird.services.ports import CpsCaps, CpsStore
from stird.wiring.config import Config
from stird.wiring.cps_app import build_cps, run_cps
from tests.core.vectors import RFC8225_TOKEN

TN, TN2 = "12025550101", "12025550102"
TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey

    def publication(self, tns: list[str], keys: list[oob.RecipientKey],
                    signer_tns: list[str] | None = None) -> str:  # fmt: skip
        signer = ec.generate_private_key(ec.SECP256R1())
        now = int(time.time())
        leaf = certs.make_stir_cert(signer, now=now, tns=signer_tns or tns,
                                    issuer_key=self.root_key, issuer_cert=self.root)  # fmt: skip
        return oobkeys.build_publication(keys, tns, signing_key=signer, chain=[leaf, self.root],
                                         now=now)  # fmt: skip


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def session(source: str = "127.0.0.1") -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as s:
        yield s


def cps_app(pki: Pki, store: CpsStore | None = None, policy: CpsPolicy | None = None
            ) -> tuple[web.Application, CpsService]:  # fmt: skip
    directory = KeyDirectory(MemoryStore(), PublicationPolicy(anchors=(pki.root,)))
    service = CpsService(store if store is not None else MemoryCpsStore(), policy,
                         suites=directory.suites)  # fmt: skip
    return build_cps_app(service, directory), service


@pytest.fixture
async def base(pki: Pki) -> AsyncIterator[str]:
    async with serving(cps_app(pki)[0]) as url:
        yield url


async def store(
    s: aiohttp.ClientSession, base: str, tn: str, entries: tuple
) -> aiohttp.ClientResponse:
    content_type, body = cps.store_body(entries)
    async with s.post(f"{base}/cps/{tn}/ppts", data=body,
                      headers={"Content-Type": content_type}) as response:  # fmt: skip
        await response.read()
        return response


async def listing(s: aiohttp.ClientSession, base: str, tn: str) -> tuple:
    async with s.get(f"{base}/cps/{tn}/ppts") as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        return cps.parse_list_document(await response.read())


def opened(items: tuple, key: DecryptionKey, tn: str = TN) -> list[str]:
    return [t for _, e in items if (t := oob.open_entry(e, [key], tn)) is not None]


async def test_end_to_end_on_loopback(base: str, pki: Pki, enc: DecryptionKey) -> None:
    async with session() as s:
        token = pki.publication([TN], [enc.public_key()])
        async with s.put(f"{base}/keys/{TN}", data=token) as r:
            assert r.status == 200 and (await r.json())["kids"] == [enc.kid]
        async with s.get(f"{base}/keys/{TN}") as r:
            doc = await r.json()
        keys = [oob.key_from_jwk(j) for j in doc["keys"]]
        assert keys == [enc.public_key()] and doc["publications"] == [token]
        # the client checks the publication itself, end to end
        pub = oobkeys.read_publication(doc["publications"][0])
        oobkeys.verify_publication(pub, PublicationPolicy(anchors=(pki.root,)), int(time.time()))

        response = await store(s, base, TN, oob.seal(RFC8225_TOKEN, keys, TN))
        assert response.status == 201
        location = response.headers["Location"]
        assert location.startswith(f"/cps/{TN}/ppts/")
        items = await listing(s, base, TN)
        assert len(items) >= 2 and opened(items, enc) == [RFC8225_TOKEN]
        assert location.rsplit("/", 1)[1] in {i for i, _ in items}
        async with s.get(base + location) as r:
            assert r.status == 200 and r.content_type == "application/passport"
            assert r.headers["Link"] == f'</cps/{TN}/ppts>; rel="collection"'
            assert oob.open_entry(await r.text(), [enc], TN) == RFC8225_TOKEN


async def test_batch_store(base: str, enc: DecryptionKey) -> None:
    other = DecryptionKey.generate(OobSuite.MLKEM768_X25519, secrets.token_bytes)
    entries = oob.seal(RFC8225_TOKEN, [enc.public_key(), other.public_key()], TN)
    async with session() as s:
        async with s.post(f"{base}/cps/{TN}/ppts", json={"ppts": [e.text for e in entries]}) as r:
            assert r.status == 201
            doc = await r.json()
        assert len(doc["locations"]) == 2 and doc["ttl"] == 60
        items = await listing(s, base, TN)
        assert opened(items, enc) == [RFC8225_TOKEN] and opened(items, other) == [RFC8225_TOKEN]


async def test_empty_number_lists_fresh_dummies(base: str, enc: DecryptionKey) -> None:
    async with session() as s:
        first, second = await listing(s, base, TN2), await listing(s, base, TN2)
    assert first and second and opened(first, enc, TN2) == []
    assert not {e.text for _, e in first} & {e.text for _, e in second}


async def test_key_publication_outside_tnauthlist_refused(base: str, pki: Pki,
                                                           enc: DecryptionKey) -> None:  # fmt: skip
    async with session() as s:
        wide = pki.publication([TN, TN2], [enc.public_key()], signer_tns=[TN])
        async with s.post(f"{base}/keys/{TN}", data=wide) as r:
            assert r.status == 403 and (await r.json())["check"] == "authority"
        other = pki.publication([TN2], [enc.public_key()])
        async with s.post(f"{base}/keys/{TN}", data=other) as r:
            assert r.status == 400 and "does not name" in (await r.json())["error"]
        async with s.get(f"{base}/keys/{TN}") as r:
            assert (await r.json())["keys"] == []
        async with s.post(f"{base}/keys/{TN}", data=b"not a jws") as r:
            assert r.status == 400


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("GET", "/cps/12o25550101/ppts", None, {}, 400),
        ("GET", "/cps/1234567890123456/ppts", None, {}, 400),
        ("GET", "/cps/+12025550101/ppts", None, {}, 400),
        ("GET", f"/cps/{TN}/ppts/short", None, {}, 400),
        ("POST", f"/cps/{TN}/ppts", b"AAAA", {"Content-Type": "application/passport"}, 400),
        ("POST", f"/cps/{TN}/ppts", b"x", {"Content-Type": "text/plain"}, 415),
        ("POST", f"/cps/{TN}/ppts", b"A" * 70000, {"Content-Type": "application/passport"}, 413),
        ("POST", f"/cps/{TN}/ppts", b'{"ppts": []}', {"Content-Type": "application/json"}, 400),
        ("GET", "/cps", None, {}, 404),
    ],
)
async def test_malformed_requests_get_json_errors(
    base: str, method: str, path: str, body: bytes | None, headers: dict, status: int
) -> None:
    async with session() as s, s.request(method, base + path, data=body, headers=headers) as r:
        assert r.status == status
        if status != 404:
            assert "error" in await r.json()


async def test_flood_from_one_peer_is_capped_without_hurting_others(pki: Pki,
                                                                    enc: DecryptionKey) -> None:  # fmt: skip
    policy = CpsPolicy(caps=CpsCaps(per_tn=20, per_client=100, per_client_tn=3))
    app, service = cps_app(pki, policy=policy)
    entries = oob.seal(RFC8225_TOKEN, [enc.public_key()], TN)
    async with serving(app) as url, session("127.0.0.2") as flooder, session() as caller:
        codes = [(await store(flooder, url, TN, entries)).status for _ in range(10)]
        assert codes == [201] * 3 + [429] * 7
        refused = await store(flooder, url, TN, entries)
        assert refused.headers["Retry-After"] == "60"
        assert (await store(caller, url, TN, entries)).status == 201
        assert len(opened(await listing(caller, url, TN), enc)) == 4
    assert service.refused == 8


async def test_entries_age_out(pki: Pki, enc: DecryptionKey) -> None:
    app, _ = cps_app(pki, policy=CpsPolicy(ttl=0.3))
    async with serving(app) as url, session() as s:
        response = await store(s, url, TN, oob.seal(RFC8225_TOKEN, [enc.public_key()], TN))
        assert opened(await listing(s, url, TN), enc) == [RFC8225_TOKEN]
        await asyncio.sleep(0.45)
        assert opened(await listing(s, url, TN), enc) == []
        async with s.get(url + response.headers["Location"]) as r:  # a dummy, not a 404
            assert r.status == 200 and oob.open_entry(await r.text(), [enc], TN) is None


async def test_two_cps_servers_share_one_redis(
    pki: Pki, enc: DecryptionKey, redis_url: str
) -> None:
    prefix = f"cps:{uuid.uuid4().hex}:"
    policy = CpsPolicy(caps=CpsCaps(per_tn=50, per_client=50, per_client_tn=4))
    entries = oob.seal(RFC8225_TOKEN, [enc.public_key()], TN)
    async with RedisCpsStore(redis_url, prefix=prefix, timeout=2.0) as one, \
            RedisCpsStore(redis_url, prefix=prefix, timeout=2.0) as two:  # fmt: skip
        app_a, _ = cps_app(pki, one, policy)
        app_b, _ = cps_app(pki, two, policy)
        async with serving(app_a) as a, serving(app_b) as b, session() as s:
            response = await store(s, a, TN, entries)
            assert response.status == 201
            items = await listing(s, b, TN)
            assert opened(items, enc) == [RFC8225_TOKEN]
            async with s.get(b + response.headers["Location"]) as r:
                assert oob.open_entry(await r.text(), [enc], TN) == RFC8225_TOKEN
            # the flood cap counts across both servers
            codes = [(await store(s, url, TN, entries)).status for url in (a, b, a, b)]
            assert codes == [201, 201, 201, 429]


async def test_redis_down_is_503(pki: Pki, enc: DecryptionKey) -> None:
    from tests.fixtures_redis import free_port

    down = RedisCpsStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    directory = KeyDirectory(MemoryStore(), PublicationPolicy())
    app = build_cps_app(CpsService(down), directory, ping=down.ping)
    async with serving(app) as url, session() as s:
        async with s.get(url + "/healthz") as r:
            assert r.status == 503
        response = await store(s, url, TN, oob.seal(RFC8225_TOKEN, [enc.public_key()], TN))
        assert response.status == 503
    await down.close()


async def test_healthz_and_mounting_in_another_app(pki: Pki) -> None:
    directory = KeyDirectory(MemoryStore(), PublicationPolicy(anchors=(pki.root,)))
    host = web.Application()
    add_cps_routes(host, CpsService(MemoryCpsStore()), directory)
    async with serving(host) as url, session() as s:
        async with s.get(f"{url}/cps/{TN}/ppts") as r:
            assert r.status == 200
        async with s.get(f"{url}/healthz") as r:
            assert r.status == 404  # the host app owns /healthz
    async with serving(cps_app(pki)[0]) as url, session() as s, s.get(url + "/healthz") as r:
        assert (await r.json())["status"] == "ok"


def test_client_key() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:ffff::1") == client_key("2001:db8:1:2::9")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key(None) == "unknown"


async def test_embedded_default_cps_closes_the_loop(tmp_path: Path) -> None:
    """stird cps serve with no configuration: the development key serves every number."""
    parts = build_cps(Config(), tmp_path)
    private = oob.private_key_from_jwk(
        json.loads((tmp_path / "dev" / "enc-private.jwk").read_text())
    )
    stop = asyncio.Event()
    from tests.fixtures_redis import free_port

    port = free_port()
    task = asyncio.create_task(run_cps(parts, "127.0.0.1", port, stop))
    base = f"http://127.0.0.1:{port}"
    async with session() as s:
        for _ in range(100):
            try:
                async with s.get(f"{base}/keys/{TN}") as r:
                    keys = [oob.key_from_jwk(j) for j in (await r.json())["keys"]]
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        assert keys == [private.public_key()]
        await store(s, base, TN, oob.seal(RFC8225_TOKEN, keys, TN))
        assert opened(await listing(s, base, TN), private) == [RFC8225_TOKEN]
    stop.set()
    await task


def test_cps_main_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stird.wiring.cps_app import cps_main

    assert cps_main(None, "not-a-hostport", str(tmp_path), None) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert cps_main(str(tmp_path / "missing.toml"), "127.0.0.1:0", str(tmp_path), None) == 2
