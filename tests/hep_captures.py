"""The HEP3 datagrams captured from a real Asterisk 22.10.1 (res_hep_pjsip): the copy in
``tests/data/hep/`` (byte for byte ``../shared/asterisk/transcripts/hep/``, whose README
describes them), else that folder beside the checkout or further up. Missing: skipped, or
failed under CI (tests/peers.py, the same rule as the real peers)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from stird.core.hep import HepPacket, decode_hep, encode_hep
from tests.peers import missing

_RELATIVE = Path("asterisk") / "transcripts" / "hep"


def hep_dir() -> Path:
    repo = Path(__file__).resolve().parents[1]
    # a copy in the tests (as the other transcripts), so a bare clone runs them too
    candidates = [
        Path(__file__).resolve().parent / "data" / "hep",
        repo / ".." / "shared" / _RELATIVE,
    ]
    if os.environ.get("STIRD_SHARED"):
        candidates.insert(0, Path(os.environ["STIRD_SHARED"]) / _RELATIVE)
    candidates += [parent / "shared" / _RELATIVE for parent in repo.parents]
    for candidate in candidates:
        if (candidate / "decoded.json").is_file():
            return candidate
    missing("../shared/asterisk/transcripts/hep not found beside the checkout")


def raw(name: str) -> bytes:
    """One captured datagram by its number ("01") or file name."""
    folder = hep_dir()
    if name.endswith(".hep"):
        return (folder / name).read_bytes()
    (path,) = folder.glob(f"{name}-*.hep")
    return path.read_bytes()


def decoded() -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads((hep_dir() / "decoded.json").read_text())
    return result


def sip_text(name: str) -> str:
    return decode_hep(raw(name)).payload.decode()


def set_header(message: str, name: str, value: str | None) -> str:
    """Replace (or drop, value None; or append before the blank line) a header of a
    captured SIP message, keeping everything else byte for byte."""
    head, _, body = message.partition("\r\n\r\n")
    lines = head.split("\r\n")
    out = [lines[0]]
    done = False
    for line in lines[1:]:
        if line.split(":", 1)[0].strip().lower() == name.lower():
            if value is not None and not done:
                out.append(f"{name}: {value}")
            done = True
            continue
        out.append(line)
    if not done and value is not None:
        out.append(f"{name}: {value}")
    return "\r\n".join(out) + "\r\n\r\n" + body


def replayed(name: str, message: str | None = None, **changes: Any) -> bytes:
    """The captured datagram ``name`` as Asterisk would send it carrying ``message``
    (same chunks, same order; only the payload and total length change)."""
    packet: HepPacket = decode_hep(raw(name))
    if message is not None:
        packet = replace(packet, payload=message.encode())
    return encode_hep(replace(packet, **changes))
