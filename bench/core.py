"""In-process rates: stird's core sign/verify against raw ECDSA P-256 with cryptography.

Run by ``bench/run.py`` pinned to the server core; prints one JSON object. Raw and stird
are measured in alternating slices of the same length and the ratio is the median of the
per-round ratios, so background load on a shared machine hits both sides alike.

* ``raw_sign``: ``key.sign(signing_input, ECDSA(SHA256))`` — exactly what stird's ES256
  signer calls (randomised ECDSA, so identical claims never give identical PASSporTs);
* ``core_sign``: :func:`stird.core.sign.sign_request` + ``IdentityHeader.format()`` for a
  `shaken` PASSporT — claims, canonical JSON, base64url, ES256, the Identity value;
* ``raw_verify``: ``public_key.verify(der, signing_input, ECDSA(SHA256))``;
* ``core_verify``: :func:`stird.core.verify.verify_request` on that Identity value with
  the certificate pinned — RFC 8224 §6.2 with TNAuthList authority, no I/O;
* ``service_sign``: :meth:`AuthenticationService.sign` (credential choice, Date, both
  checks of §6.1) — the part of an HTTP sign that is not HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# STIRD_BENCH_DAEMON: measure another source tree (e.g. a patched copy) with this harness.
sys.path.insert(0, os.environ.get("STIRD_BENCH_DAEMON") or str(ROOT / "daemon"))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from stird.core import certs  # noqa: E402
from stird.core.passport import Ppt  # noqa: E402
from stird.core.sign import SignRequest, sign_request  # noqa: E402
from stird.core.tn import parse_cli_id  # noqa: E402
from stird.core.verdict import Credential, SipFacts, Trust, Verdict, VerifyPolicy  # noqa: E402
from stird.core.verify import verify_request  # noqa: E402

ORIG, DEST = "+12025550100", "+12025550101"
FROM = "sip:+12025550100@pbx.example.com;user=phone"
TO = "tel:+12025550101"
X5U = "https://certs.example.org/stird.pem"


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (batches of 50 calls)."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def paired(
    raw: Callable[[], object], ours: Callable[[], object], rounds: int, slice_s: float
) -> dict[str, float]:
    """Alternate raw and stird slices; medians of the rates and of the per-round ratios."""
    raws, stirds, ratios = [], [], []
    for _ in range(rounds):
        r = _rate(raw, slice_s)
        s = _rate(ours, slice_s)
        raws.append(r)
        stirds.append(s)
        ratios.append(s / r)
    return {
        "raw_per_s": round(statistics.median(raws)),
        "stird_per_s": round(statistics.median(stirds)),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
    }


def replay_cache_bytes(entries: int = 100_000) -> int:
    """Python heap held by the in-memory replay cache at its default cap (MemoryStore,
    one ``replay_key`` → ``replay_value`` entry per verified PASSporT with a Call-ID)."""
    import asyncio  # noqa: PLC0415

    from stird.adapters.store_memory import MemoryStore  # noqa: PLC0415
    from stird.services.verification import replay_key, replay_value  # noqa: PLC0415

    tracemalloc.start()
    store = MemoryStore(max_entries=entries, evict=False)
    before = tracemalloc.get_traced_memory()[0]

    async def fill() -> None:
        for i in range(entries):
            key = replay_key(i.to_bytes(16, "big"))
            value = replay_value(f"{i:016x}-call@pbx.example.com")
            await store.add(key, value, 70.0)

    asyncio.run(fill())
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per slice")
    args = parser.parse_args()

    from stird.services.authentication import (  # noqa: PLC0415
        AuthenticationService,
        SigningCredential,
        SignInput,
        SignPolicy,
    )

    now = int(time.time())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.make_stir_cert(key, now=now - 60, days=30, tns=[parse_cli_id(ORIG).value])
    request = SignRequest(
        orig=parse_cli_id(ORIG),
        dest=(parse_cli_id(DEST),),
        iat=now,
        ppt=Ppt.SHAKEN,
        attest="A",
        origid="123e4567-e89b-12d3-a456-426655440000",
    )
    signed, header = sign_request(request, key, X5U)
    identity = header.format()
    facts = SipFacts(identity=(identity,), from_=FROM, to=TO)
    lookup = {X5U: Credential((cert,), trust=Trust.ANCHOR)}
    policy = VerifyPolicy()
    assert verify_request(facts, lookup, policy, now).verdict is Verdict.VALID

    signing_alg = ec.ECDSA(hashes.SHA256())  # randomised, like stird's signer (issue #16)
    verifying_alg = ec.ECDSA(hashes.SHA256())
    data = signed.signing_input
    der = key.sign(data, signing_alg)
    public = key.public_key()
    service = AuthenticationService(
        [SigningCredential(name="bench", key=key, chain=(cert,), x5u=X5U)],
        SignPolicy(ppt=Ppt.SHAKEN),
    )
    sign_input = SignInput(orig=parse_cli_id(ORIG), dest=(parse_cli_id(DEST),))
    service.sign(sign_input)

    def stird_sign() -> str:
        return sign_request(request, key, X5U)[1].format()

    rounds, slice_s = args.rounds, args.slice
    out = {
        "sign": paired(
            lambda: key.sign(data, signing_alg),
            stird_sign,
            rounds,
            slice_s,
        ),
        "verify": paired(
            lambda: public.verify(der, data, verifying_alg),
            lambda: verify_request(facts, lookup, policy, now),
            rounds,
            slice_s,
        ),
        "service_sign": paired(
            lambda: key.sign(data, signing_alg),
            lambda: service.sign(sign_input),
            max(2, rounds // 3),
            slice_s,
        ),
        "replay_cache_100k_bytes": replay_cache_bytes(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
