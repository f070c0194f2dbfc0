"""Seed corpora for the fuzz harnesses, built from real and published data only:

* the published vectors of ``tests/core/vectors.py`` (RFC 8225, 8588, 8946 tokens, keys, SDP);
* the captured wire text in ``/work/shared`` (``$STIRD_SHARED``): Asterisk SIP, FastAGI and
  AMI transcripts, Kamailio janssonrpcc / evapi netstrings, jsonrpcs datagrams, SIP messages
  and SIPp scenarios;
* objects stird itself produces from those (certificates with TNAuthList, sealed CPS entries,
  key publications), so the fuzzers start past the signature and framing checks.

``python fuzz/seeds.py OUTDIR`` writes ``OUTDIR/<target>/seed-NNNN`` files. Multi-function
harnesses take a selector as their first byte (see ``targets.py``); the seeds carry it.
"""

from __future__ import annotations

import ast
import codecs
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT)]

SHARED = Path(os.environ.get("STIRD_SHARED", "/work/shared"))
NOW = 1795328781  # the transcripts' capture time (2026-11-22)


# --- reading the captured wire text ------------------------------------------------------


def _texts() -> Iterator[tuple[Path, str]]:
    for path in sorted(SHARED.rglob("*")):
        if path.is_file() and path.suffix in (".txt", ".xml", ".cfg"):
            yield path, path.read_text("utf-8", "replace")


def byte_literals() -> list[bytes]:
    """Every complete ``b'...'`` literal in the Kamailio transcripts (netstrings, datagrams)."""
    out = []
    for _, text in _texts():
        for match in re.finditer(r"""b'(?:[^'\\\n]|\\.)*'|b"(?:[^"\\\n]|\\.)*\"""", text):
            try:
                out.append(ast.literal_eval(match.group(0)))
            except (ValueError, SyntaxError):
                continue
    return out


def transcript_blocks(direction: str) -> list[list[bytes]]:
    """Asterisk transcripts: the payloads of ``[ts] <direction> N bytes`` blocks, one list
    per session (a session starts at the banner / the agi_* block)."""
    sessions: list[list[bytes]] = []
    for path, text in _texts():
        if "asterisk" not in path.parts:
            continue
        current: list[bytes] = []
        block: bytearray | None = None
        for line in text.splitlines():
            if re.match(r"\[[0-9:.]+\] ", line):
                if block is not None:
                    current.append(bytes(block))
                block = bytearray() if f" {direction} " in line else None
                if "FastAGI session" in line and current:
                    sessions.append(current)
                    current = []
            elif line.startswith("# FastAGI session") and current:
                if block is not None:
                    current.append(bytes(block))
                    block = None
                sessions.append(current)
                current = []
            elif block is not None and line.startswith("    "):
                block += codecs.escape_decode(line[4:].encode("utf-8"))[0]
        if block is not None:
            current.append(bytes(block))
        if current:
            sessions.append(current)
    return sessions


def json_docs() -> list[object]:
    """JSON objects carried in the netstrings and datagrams of the Kamailio transcripts."""
    docs: list[object] = []
    for raw in byte_literals():
        payload = raw
        match = re.match(rb"([0-9]+):(.*),\Z", raw, re.DOTALL)
        if match:
            payload = match.group(2)
        try:
            docs.append(json.loads(payload))
        except ValueError:
            continue
    return docs


def params_objects() -> list[dict[str, object]]:
    """The ``params`` of every stir.sign / stir.verify request Kamailio sent."""
    out = []
    for doc in json_docs():
        if isinstance(doc, dict):
            req = doc.get("req", doc)
            if isinstance(req, dict) and isinstance(req.get("params"), dict):
                out.append(req["params"])
    return out


_HEADER = re.compile(
    r"^\s*(Identity|y|From|f|To|t|P-Asserted-Identity|Date|Request-URI)\s*:[ \t]*(.*?)\r?$",
    re.IGNORECASE | re.MULTILINE,
)


def sip_headers() -> dict[str, list[str]]:
    """Header values by (lower-case, long) name from SIP messages, SIPp scenarios and the
    JSON-RPC params (``from``, ``to``, ``pai``, ``identity``, ``date``, ``ruri``)."""
    names = {"y": "identity", "f": "from", "t": "to", "p-asserted-identity": "pai"}
    out: dict[str, list[str]] = {}
    for _, text in _texts():
        for match in _HEADER.finditer(text):
            name = names.get(match.group(1).lower(), match.group(1).lower())
            out.setdefault(name, []).append(match.group(2))
    for params in params_objects():
        for name in ("from", "to", "pai", "ruri", "date"):
            if isinstance(params.get(name), str):
                out.setdefault(name, []).append(params[name])  # type: ignore[arg-type]
        values = params.get("identity")
        for value in values if isinstance(values, list) else []:
            if isinstance(value, str):
                out.setdefault("identity", []).append(value)
    return {k: _unique(v) for k, v in out.items()}


def sdp_bodies() -> list[str]:
    """SDP bodies (from ``v=0`` to the end of the ``x=`` lines) in every captured text, plus
    the ``sdp`` members of the JSON-RPC params."""
    out = []
    for _, text in _texts():
        for match in re.finditer(r"^v=0\r?$(?:\n[a-z]=.*$)+", text, re.MULTILINE):
            out.append(match.group(0).replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n")
    out += [str(p["sdp"]) for p in params_objects() if isinstance(p.get("sdp"), str)]
    return _unique(out)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- objects made by stird from published and captured data ------------------------------


def _keys():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return [ec.derive_private_key(n, ec.SECP256R1()) for n in (0x5EED1, 0x5EED2, 0x5EED3)]


def certificates() -> list[bytes]:
    """PEM chains: a CA with a TNAuthList range, a delegate leaf, a SAN-only self-signed
    certificate (RFC 8862 §4.1) and the anonymous one; plus their DER forms."""
    from stird.core import certs
    from stird.core.tnauthlist import TnRange

    ca_key, leaf_key, self_key = _keys()
    ca = certs.make_stir_cert(
        ca_key,
        now=NOW,
        ranges=(TnRange("15551110000", 10000),),
        spcs=("1234",),
        ca=True,
        path_length=0,
    )
    leaf = certs.make_stir_cert(
        leaf_key,
        now=NOW,
        tns=("15551110000",),
        issuer_key=ca_key,
        issuer_cert=ca,
        uris=("sip:alice@example.com",),
    )
    own = certs.make_stir_cert(
        self_key, now=NOW, uris=("sip:+15551110000@127.0.0.1", "tel:+15551110000")
    )
    anon = certs.make_anonymous_cert(self_key, now=NOW)
    from cryptography.hazmat.primitives import serialization

    der = [c.public_bytes(serialization.Encoding.DER) for c in (leaf, ca, own, anon)]
    pem = [certs.cert_to_pem(c) for c in (leaf, ca, own, anon)]
    return [pem[0] + pem[1], pem[2], pem[3], pem[0], *der]


def tnauthlists() -> list[bytes]:
    from stird.core.tnauthlist import TNAuthList, TnRange, encode_tnauthlist

    published = [  # DIGEST §3 vectors (tests/core/test_certs.py)
        "3008a006160431323334",
        "3015a1133011160b3132313235353531303030020203e8",
        "300fa20d160b3132313535353531323132",
    ]
    mixed = TNAuthList(
        spcs=("1234", "ABCD"),
        ranges=(TnRange("12125551000", 1000), TnRange("44", 2)),
        tns=("12155551212", "*67", "#1"),
    )
    return [bytes.fromhex(h) for h in published] + [encode_tnauthlist(mixed)]


def oob_material():  # type: ignore[no-untyped-def]
    """Fixed decryption keys (both suites), and entries sealed to them for the published
    RFC 8225 / RFC 8946 tokens, called number 15551230001."""
    from tests.core import vectors

    from stird.core import oob

    keys = [
        oob.DecryptionKey(oob.OobSuite.X25519, bytes(range(32))),
        oob.DecryptionKey(oob.OobSuite.MLKEM768_X25519, bytes(range(96))),
    ]
    entries = []
    for token in (vectors.RFC8225_TOKEN, vectors.RFC8946_DIV, vectors.RFC8946_DIV_O):
        entries += oob.seal(token, [k.public_key() for k in keys], "15551230001")
    return keys, entries


def publications() -> list[str]:
    from stird.core import certs, oobkeys
    from stird.core.tnauthlist import TnRange

    _, _, key = _keys()
    cert = certs.make_stir_cert(key, now=NOW, ranges=(TnRange("15551230000", 100),))
    keys, _ = oob_material()
    public = [k.public_key() for k in keys]
    return [
        oobkeys.build_publication(public, ["15551230001"], signing_key=key, chain=[cert], now=NOW),
        oobkeys.build_publication(
            public[:1],
            ["15551230001", "15551230002"],
            signing_key=key,
            chain=[cert],
            now=NOW,
            x5u="https://cert.example.org/k.pem",
        ),
        oobkeys.build_publication([], ["15551230001"], signing_key=key, chain=[cert], now=NOW),
    ]


def tokens() -> list[str]:
    from tests.core import vectors

    return [
        vectors.RFC8225_TOKEN,
        vectors.RFC8946_DIV,
        vectors.RFC8946_OPT,
        vectors.RFC8946_DIV_O,
        vectors.RFC8225_COMPACT,
    ]


# --- per target --------------------------------------------------------------------------


def _b(text: str) -> bytes:
    return text.encode("utf-8")


def _sel(selector: int, items: Iterable[bytes]) -> list[bytes]:
    return [bytes([selector]) + item for item in items]


def hep_datagrams() -> list[bytes]:
    """The 37 HEP3 datagrams captured from Asterisk 22.10.1 (transcripts/hep/*.hep)."""
    return [p.read_bytes() for p in sorted((SHARED / "asterisk/transcripts/hep").glob("*.hep"))]


def build() -> dict[str, list[bytes]]:
    from tests.core import vectors

    from stird.core import jose

    headers = sip_headers()
    sdps = sdp_bodies()
    params = params_objects()
    docs = json_docs()
    literals = byte_literals()
    toks = tokens()
    payloads = [
        vectors.RFC8225_APPX_PAYLOAD,
        vectors.RFC8588_PAYLOAD,
        vectors.RFC8225_CANONICAL_MKY_PAYLOAD,
    ]
    jose_headers = [vectors.RFC8225_APPX_HEADER, vectors.RFC8588_HEADER]
    keys, entries = oob_material()
    pubs = publications()
    ami = transcript_blocks("AST->CLI")
    agi = transcript_blocks("AST->AGI")
    netstrings = [raw for raw in literals if re.match(rb"[0-9]+:", raw)]
    identity_values = (
        headers.get("identity", [])
        + [f"{t};info=<https://cert.example.org/passport.cer>;alg=ES256;ppt=shaken" for t in toks]
        + ['..sig;info=<https://x/c.pem>;ppt="div",y: a.b.c;info=<sip:x>']
    )
    uris = headers.get("from", []) + headers.get("to", []) + headers.get("pai", [])
    uris += headers.get("request-uri", []) + headers.get("ruri", [])
    uris += [
        "tel:+1-202-555-0100;phone-context=+1",
        "sip:%2B15551110000@h;user=phone",
        "15551110000",
        "+1 (202) 555-0100",
        '\\"Bob\\" <sip:b@x>',
    ]
    mky = [json.loads(p).get("mky") for p in payloads if b"mky" in p]
    cps_bodies = [b"\x00" + _b(e.text) for e in entries]
    cps_bodies += [b"\x01" + _b(json.dumps({"ppts": [e.text for e in entries[:3]]}))]
    cps_bodies += [
        b"\x02"
        + _b(
            json.dumps(
                {
                    "tn": "15551230001",
                    "ppts": [
                        {
                            "id": "A" * 22,
                            "location": "/cps/15551230001/ppts/" + "A" * 22,
                            "ppt": e.text,
                        }
                        for e in entries[:2]
                    ],
                }
            )
        )
    ]
    cps_bodies += [b"\x03" + b"15551230001", b"\x04" + b"AAAAAAAAAAAAAAAAAAAAAA"]
    jwks = [json.dumps(k.public_key().jwk()) for k in keys]
    jwks += [json.dumps(k.private_jwk()) for k in keys]
    rpc = [d for d in docs if isinstance(d, dict) and "jsonrpc" in d]
    rpc += [[r, {"jsonrpc": "2.0", "method": "stir.status", "id": "s"}] for r in rpc[:2]]
    rpc += [
        {"jsonrpc": "2.0", "method": m, "params": p, "id": i}
        for i, (m, p) in enumerate(
            [
                ("stir.sign", params[0] if params else {}),
                ("stir.verify", {"from": "<sip:a@b>", "to": "<sip:c@d>", "timeout_ms": 1500}),
                ("echo", [1, "x", None]),
                ("boom.stir", None),
                ("boom.field", {}),
                ("boom.bug", {}),
            ]
        )
    ]

    return {
        "identity": [_b(v) for v in identity_values],
        "passport": _sel(0, map(_b, toks)) + _sel(1, payloads) + _sel(2, jose_headers),
        "sdp": _sel(0, map(_b, sdps))
        + _sel(0, [_b(vectors.RFC8225_SDP_LINES)])
        + _sel(1, [_b(json.dumps(m)) for m in mky]),
        "tn": [bytes([sel]) + _b(u) for u in _unique(uris) for sel in (0, 8, 17, 24)],
        "tnauthlist": tnauthlists(),
        "certs": _sel(0, certificates()) + _sel(1, [bytes(range(64)), b"\x00" * 8, b"\xff" * 16]),
        "sipdate": [_b(d) for d in headers.get("date", [])] + [b"Fri, 25 Sep 2015 19:12:25 GMT"],
        "agi": _sel(2, [b"".join(s) for s in agi])
        + _sel(0, [line for s in agi for b in s[1:] for line in b.split(b"\n") if line][:200])
        + _sel(1, [s[0] for s in agi if s]),
        "ami": [bytes([sel]) + ami[0][0] + b for s in ami for b in s[1:] for sel in (0, 17)],
        "requests": [bytes([sel]) + _b(json.dumps(p)) for p in params for sel in range(4)],
        "jsonrpc": [_b(json.dumps(d)) for d in rpc],
        "netstring": [bytes([sel]) + raw for raw in netstrings for sel in (0, 7, 200)]
        + [b"\x00" + b"".join(netstrings[:5])],
        "cps": cps_bodies,
        "oob": _sel(0, [_b(e.text) for e in entries])
        + _sel(1, [e.to_bytes() for e in entries])
        + _sel(2, [_b(e.text) for e in entries])
        + _sel(3, [_b(t) for t in toks] + [b"\x00" * 8, b"a.b.c\x00\x00"])
        + _sel(4, map(_b, jwks)),
        "hep": _sel(0, hep_datagrams())
        + _sel(1, [_hep_payload(d) for d in hep_datagrams()[:12]])
        + _sel(0, [b"HEP3\x00\x06", b"HEP3\x00\x0c\x00\x00\x00\x0f\x00\x06"]),
        "oobkeys": _sel(0, map(_b, pubs))
        + _sel(1, [jose.b64u_decode(p.split(".")[1], "p") for p in pubs])
        + _sel(2, [jose.b64u_decode(p.split(".")[0], "h") for p in pubs]),
    }


def _hep_payload(datagram: bytes) -> bytes:
    from stird.core.hep import decode_hep

    return decode_hep(datagram).payload


def write(outdir: Path, only: Iterable[str] | None = None) -> dict[str, int]:
    corpora = build()
    counts = {}
    for name, items in corpora.items():
        if only is not None and name not in only:
            continue
        target = outdir / name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("seed-*"):
            old.unlink()
        for i, item in enumerate(dict.fromkeys(items)):
            (target / f"seed-{i:04d}").write_bytes(item)
        counts[name] = len(dict.fromkeys(items))
    return counts


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "fuzz" / "work" / "seeds")
    for name, count in write(out).items():
        print(f"{name:12s} {count:5d} seeds -> {out / name}")
