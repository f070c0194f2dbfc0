"""The `verstat` parameter a verifier adds for the called phone (3GPP TS 24.229
§7.2A.20): on the user part of a sip: URI, as a parameter of a tel: URI."""

from __future__ import annotations

from stird.core.tn import addr_spec, addr_specs


def with_verstat(header_value: str, verstat: str) -> str:
    """A P-Asserted-Identity value carrying ``verstat`` (display name and the
    header's own parameters dropped; several entries: the first is marked)."""
    uri = addr_specs(header_value)[0] if "," in header_value else addr_spec(header_value)
    scheme, _, rest = uri.partition(":")
    if scheme.lower() == "tel":
        return f"<{uri};verstat={verstat}>"
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return f"<{uri}>"
    return f"<{scheme}:{userinfo};verstat={verstat}@{hostpart}>"
