"""A small ATIS-style CPS (DIGEST §5.2) for the tests: ``POST``/``GET
/passports/{dest}/{orig}`` with ``{"passports": [...]}``, every request authorised by an
ES256 Bearer JWT whose signature (under the key its ``x5u`` names) and claims it checks.
Refusals are 401 with the reason, kept in ``refusals``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from stird.core import atis, jose
from stird.core.errors import StirError

KeyFor = Callable[[str], Awaitable[ec.EllipticCurvePublicKey]]


class FakeAtisCps:
    def __init__(self, spc: str, key_for: KeyFor) -> None:
        self.spc, self.key_for = spc, key_for
        self.stored: dict[tuple[str, str], list[str]] = {}
        self.claims: list[dict[str, Any]] = []
        self.refusals: list[str] = []
        self._jtis: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/passports/{dest}/{orig}", self.publish)
        app.router.add_get("/passports/{dest}/{orig}", self.retrieve)
        return app

    async def _claims(self, request: web.Request, action: str) -> dict[str, Any]:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise ValueError("no Bearer token")
        token = auth.removeprefix("Bearer ")
        head = json.loads(jose.b64u_decode(token.split(".")[0], "header"))
        _, claims = atis.read_auth_token(token, await self.key_for(head["x5u"]))
        dest, orig = request.match_info["dest"], request.match_info["orig"]
        expected = {"action": action, "spc": self.spc, "iss": self.spc, "aud": request.url.host,
                    "dest": {"tn": [dest]}, "orig": {"tn": orig}}  # fmt: skip
        for name, value in expected.items():
            if claims.get(name) != value:
                raise ValueError(f"claim {name}: {claims.get(name)!r} != {value!r}")
        if abs(claims["iat"] - time.time()) > 60 or str(uuid.UUID(claims["jti"])) in self._jtis:
            raise ValueError("stale iat or replayed jti")
        self._jtis.add(claims["jti"])
        self.claims.append(claims)
        return claims

    async def _guard(self, request: web.Request, action: str) -> dict[str, Any] | web.Response:
        try:
            return await self._claims(request, action)
        except (ValueError, KeyError, StirError) as exc:
            self.refusals.append(str(exc))
            return web.json_response({"error": str(exc)}, status=401)

    async def publish(self, request: web.Request) -> web.Response:
        claims = await self._guard(request, "publish")
        if isinstance(claims, web.Response):
            return claims
        passports = list(atis.parse_passports_body(await request.read()))
        if (
            claims.get("passports") != atis.passports_digest(passports)
            or claims["exp"] <= claims["iat"]
        ):
            self.refusals.append("passports digest or exp")
            return web.json_response({"error": "passports digest or exp"}, status=401)
        key = (request.match_info["dest"], request.match_info["orig"])
        self.stored.setdefault(key, []).extend(passports)
        return web.json_response({"stored": len(passports)}, status=201)

    async def retrieve(self, request: web.Request) -> web.Response:
        claims = await self._guard(request, "retrieve")
        if isinstance(claims, web.Response):
            return claims
        if "passports" in claims:
            return web.json_response({"error": "retrieve token with passports"}, status=401)
        key = (request.match_info["dest"], request.match_info["orig"])
        return web.json_response({"passports": self.stored.get(key, [])})
