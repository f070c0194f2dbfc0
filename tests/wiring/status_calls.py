"""Calls for the status page's tests: signed and verified through a running daemon's HTTP
API (valid, tampered, stale) plus a hostile one whose From carries markup."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from stird.adapters import keyfiles
from stird.core.passport import Ppt
from stird.core.sign import SignRequest, sign_request
from stird.core.sipdate import format_sip_date
from stird.core.tn import IdKind, PartyId

CALLER, CALLEE = "+15551110000", "+15552220000"
FROM, TO = f"<sip:{CALLER}@pbx.example>;tag=1", f"<sip:{CALLEE}@pbx.example>"
HOSTILE_FROM = '"<script>alert(1)</script><img src=x onerror=alert(2)>" <sip:+15553330000@x>'


@dataclass(frozen=True)
class Driven:
    valid: str  # Call-IDs
    tampered: str
    stale: str
    hostile: str
    signed_passport: str  # the full PASSporT the valid call carried


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, data=json.dumps(body).encode()) as answer:
        return answer.status, json.loads(await answer.text())


def _tampered(identity: str) -> str:
    token, _, params = identity.partition(";")
    head, payload, sig = token.split(".")
    sig = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    return f"{head}.{payload}.{sig};{params}"


async def drive(base: str, state_dir: Path, headers: dict[str, str] | None = None) -> Driven:
    """Sign and verify a valid call, a tampered one, a stale one, and a hostile unsigned
    one; returns their Call-IDs."""
    ids = {name: f"{name}-{uuid.uuid4().hex[:8]}@pbx.example"
           for name in ("valid", "tampered", "stale", "hostile")}  # fmt: skip
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        passport = ""
        for name in ("valid", "tampered"):
            body = {"orig": CALLER, "dest": [CALLEE], "call_id": ids[name]}
            status, signed = await post(session, f"{base}/v1/sign", body)
            assert status == 200, signed
            passport = passport or signed["passport"]
            identity = signed["identity"]
            if name == "tampered":
                identity = [_tampered(identity[0])]
            verify = {"identity": identity, "from": FROM, "to": TO, "date": signed["date"],
                      "call_id": ids[name]}  # fmt: skip
            status, verdict = await post(session, f"{base}/v1/verify", verify)
            assert status == 200, verdict
        # stale: signed an hour ago with the daemon's own development credential
        key = keyfiles.load_private_key(state_dir / "dev" / keyfiles.PRIVATE_NAME)
        then = int(time.time()) - 3600
        request = SignRequest(orig=PartyId(IdKind.TN, CALLER[1:]),
                              dest=(PartyId(IdKind.TN, CALLEE[1:]),), iat=then, ppt=Ppt.SHAKEN,
                              attest="A", origid=str(uuid.uuid4()))  # fmt: skip
        _, header = sign_request(request, key, f"{base}/certs/dev.pem")
        stale = {"identity": [header.format()], "from": FROM, "to": TO,
                 "date": format_sip_date(then), "call_id": ids["stale"]}  # fmt: skip
        status, verdict = await post(session, f"{base}/v1/verify", stale)
        assert status == 200, verdict
        hostile = {"from": HOSTILE_FROM, "to": TO, "call_id": ids["hostile"]}
        status, verdict = await post(session, f"{base}/v1/verify", hostile)
        assert status == 200, verdict
    return Driven(ids["valid"], ids["tampered"], ids["stale"], ids["hostile"], passport)
