"""The verification service's decision (RFC 8224 §6.2), sans I/O.

Two phases, so that nothing is fetched for a request that fails on its own text:
:func:`prepare` runs every check that needs no certificate (syntax, ``alg``/``ppt``
consistency, orig/dest against From/To/PAI, freshness, ``mky`` against the SDP); the
caller obtains only the credentials of the PASSporTs that passed (:attr:`Prepared.uris`
— fetching, caching and pinning are the services layer's business); then :func:`finish`
establishes trust, checks signatures and authority, and combines the headers per
§6.2.1 and RFC 8862 §4.4. :func:`verify_request` is both in one call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509

from stird.core import certs
from stird.core.errors import Check, SipStatus, StirError, invalid_header, invalid_passport
from stird.core.identity import IdentityHeader, parse_identity
from stird.core.jose import b64u_decode, signature_id
from stird.core.passport import (
    ES256,
    Claims,
    Dest,
    Ppt,
    SignedPassport,
    decode,
    with_signature,
)
from stird.core.sdp import SdpKeys, mky_matches, parse_sdp_keys
from stird.core.sipdate import parse_sip_date
from stird.core.tn import PartyId, party_from_header, party_from_pai, party_from_uri
from stird.core.verdict import (
    Credential,
    CredentialLookup,
    Form,
    PassportCheck,
    SipFacts,
    Trust,
    Verdict,
    Verification,
    VerifyPolicy,
)

#: RFC 8224 §6.2 step 1: the ppt values stird verifies (None = baseline PASSporT).
SUPPORTED_PPT: frozenset[str | None] = frozenset({None, Ppt.SHAKEN, Ppt.MSEC, Ppt.DIV})
_ATTEST = frozenset({"A", "B", "C"})


@dataclass(frozen=True, slots=True)
class _Signalling:
    """The request's identities, parsed once (RFC 8224 §8.1)."""

    origs: tuple[PartyId, ...]  # From, then PAI when policy allows
    dests: tuple[PartyId, ...]  # To, then Request-URI
    date: int | None
    sdp: SdpKeys | None
    sdp_unavailable: bool = False  # SipFacts.sdp_unavailable: msec mky left unchecked


def _signalling(facts: SipFacts, policy: VerifyPolicy) -> _Signalling:
    region = policy.default_region
    origs: list[PartyId] = []
    if facts.from_:
        origs.append(party_from_header(facts.from_, default_region=region))
    if facts.pai and policy.use_pai:
        origs.append(party_from_pai(facts.pai, default_region=region))
    dests: list[PartyId] = []
    if facts.to:
        dests.append(party_from_header(facts.to, default_region=region))
    if facts.ruri:
        dests.append(party_from_uri(facts.ruri.strip(), default_region=region))
    date = parse_sip_date(facts.date) if facts.date else None
    sdp = parse_sdp_keys(facts.sdp) if facts.sdp else None
    unavailable = facts.sdp_unavailable and sdp is None
    return _Signalling(tuple(origs), tuple(dests), date, sdp, unavailable)


def _parse_all(values: Iterable[str]) -> list[IdentityHeader | StirError]:
    parsed: list[IdentityHeader | StirError] = []
    for value in values:
        try:
            parsed.extend(parse_identity(value))
        except StirError as exc:
            parsed.append(exc)
    return parsed


def credential_uris(facts: SipFacts) -> tuple[str, ...]:
    """Every ``info`` URI of the request's supported Identity headers, before any check
    (for offline tools that load credentials from files; the verification service
    obtains only :attr:`Prepared.uris`)."""
    uris: dict[str, None] = {}
    for item in _parse_all(facts.identity):
        if isinstance(item, IdentityHeader) and item.ppt in SUPPORTED_PPT:
            uris[item.info] = None
    return tuple(uris)


def _rebuild_compact(header: IdentityHeader, sig: _Signalling) -> SignedPassport:
    """RFC 8224 §4.1 / §6.2 step 5: rebuild header and claims from signalling."""
    if header.ppt not in (None, Ppt.MSEC):
        raise invalid_passport(f"compact form is not defined for ppt {header.ppt!r}")
    if not sig.origs or not sig.dests or sig.date is None:
        raise invalid_header("compact form needs From, To and Date to rebuild the PASSporT")
    fps = sig.sdp.all_lines() if sig.sdp else ()
    claims = Claims(orig=sig.origs[0], dest=Dest.of([sig.dests[0]]), iat=sig.date, mky=fps or None)
    signature = b64u_decode(header.digest[2:], "signature")
    return with_signature(header.passport_header(), claims, signature)


def _passport(header: IdentityHeader, sig: _Signalling) -> SignedPassport:
    if header.is_compact:
        return _rebuild_compact(header, sig)
    sp = decode(header.digest)
    if sp.header.x5u != header.info:
        raise invalid_header("x5u does not match info (RFC 8224 §4.1)", Check.CREDENTIAL)
    if header.ppt is not None and header.ppt != sp.header.ppt:
        raise invalid_passport("Identity ppt differs from the PASSporT's ppt", Check.PPT)
    if header.alg is not None and header.alg != sp.header.alg:
        detail = f"Identity alg {header.alg!r} differs from the PASSporT's {sp.header.alg!r}"
        raise invalid_header(detail + " (RFC 8224 §4.1)", Check.SIGNATURE)
    return sp


def _check_alg(sp: SignedPassport) -> None:
    """RFC 8224 §6.2.2: an algorithm the verifier does not support is 437."""
    if sp.header.alg != ES256:
        raise StirError(
            SipStatus.UNSUPPORTED_CREDENTIAL,
            f"unsupported alg {sp.header.alg!r} (stird verifies ES256)",
            check=Check.SIGNATURE,
        )


def _check_parties(claims: Claims, sig: _Signalling) -> None:
    """Step 2 and RFC 8225 §10.1: orig from signalling (§6.2.4), dest the called party."""
    if sig.origs and claims.orig not in sig.origs:
        raise invalid_header(
            f"orig {claims.orig.value} does not match From/P-Asserted-Identity", Check.IDENTITY
        )
    if sig.dests and not set(claims.dest.parties()) & set(sig.dests):
        raise invalid_header("dest matches neither To nor the Request-URI", Check.DEST)


def _check_fresh(iat: int, sig: _Signalling, policy: VerifyPolicy, now: int) -> None:
    """Step 4 and RFC 8224 §12.1: iat and Date within the freshness window."""
    for name, value in (("iat", iat), ("Date", sig.date)):
        if value is None:
            continue
        if now - value > policy.max_age:
            raise StirError(
                SipStatus.STALE_DATE, f"{name} is {now - value} s old", check=Check.FRESHNESS
            )
        if value - now > policy.max_skew:
            raise StirError(
                SipStatus.STALE_DATE,
                f"{name} lies {value - now} s in the future",
                check=Check.FRESHNESS,
            )


def _credential(info: str, credentials: CredentialLookup) -> Credential:
    found = credentials.get(info)
    if isinstance(found, StirError):
        raise found
    if found is None or not found.chain:
        raise StirError(
            SipStatus.BAD_IDENTITY_INFO, f"no credential for {info}", check=Check.CREDENTIAL
        )
    return found


def _establish_trust(cred: Credential, sp: SignedPassport, policy: VerifyPolicy) -> Trust:
    """The trust model: a chain to a configured anchor (RFC 8226 §9, RFC 9060) speaks for
    what its certificates cover; a self-signed credential trusted by a pin or on first
    use (RFC 8862 §4.1) only for ``msec`` — continuity of the caller's keys, not
    ownership of a number — so a ``shaken``, ``div`` or baseline PASSporT on one is 437."""
    leaf, iat = cred.chain[0], sp.claims.iat
    certs.check_signing_key(leaf)
    if cred.trust is Trust.ANCHOR:  # stird's own, configured credential
        certs.check_validity(leaf, iat)
        return Trust.ANCHOR
    try:
        if not policy.anchors:
            raise StirError(
                SipStatus.UNSUPPORTED_CREDENTIAL, "no trust anchors configured", check=Check.TRUST
            )
        certs.validate_chain(cred.chain, policy.anchors, iat)
    except StirError as exc:
        if cred.trust is None:
            raise
        if sp.ppt != Ppt.MSEC:
            detail = (
                f"a self-signed credential trusted by {cred.trust.value} speaks only for msec "
                f"(RFC 8862 §4.1); a {sp.ppt or 'baseline'} PASSporT needs a chain to a "
                f"trust anchor ({exc.detail})"
            )
            raise StirError(SipStatus.UNSUPPORTED_CREDENTIAL, detail, check=Check.TRUST) from None
        certs.check_validity(leaf, iat)
        return cred.trust
    return Trust.ANCHOR


def _check_authority(sp: SignedPassport, cred: Credential, policy: VerifyPolicy) -> None:
    """RFC 8226 §9 / RFC 8862 §4.1: the credential covers orig — or, for `div`, the
    identity the call was diverted from (RFC 8946 §3)."""
    orig = sp.claims.orig
    if sp.ppt == Ppt.DIV:
        if sp.claims.div is None or sp.claims.opt is not None:
            raise invalid_passport("div PASSporT needs div and must not carry opt (RFC 8946 §3)")
        orig = sp.claims.div
    if sp.ppt == Ppt.SHAKEN and policy.shaken_spc_authorizes and policy.spc_tns is None:
        tal = certs.tnauthlist_of(cred.chain[0])
        if tal is not None and tal.spcs:
            return
    certs.check_authority(cred.chain, orig.kind.value, orig.value, policy.spc_tns)


def _check_extension(sp: SignedPassport, sig: _Signalling) -> None:
    """msec (RFC 8862 §3, §4; RFC 8224 §4.1 mky) and shaken (RFC 8588 §4) claims."""
    mky = sp.claims.mky
    if sp.ppt == Ppt.MSEC and sig.sdp_unavailable:  # the PBX cannot show the SDP
        if mky is None:
            raise invalid_passport("msec PASSporT without mky", Check.MKY)
    elif sp.ppt == Ppt.MSEC:
        if sig.sdp is None or not sig.sdp.all_lines():
            raise invalid_header("msec needs an SDP with a=fingerprint", Check.MKY)
        if sig.sdp.has_k_line:
            raise invalid_header("SDP k= lines are not allowed with msec (RFC 8862 §3)", Check.MKY)
        if mky is None:
            raise invalid_passport("msec PASSporT without mky", Check.MKY)
    if (
        mky is not None
        and sig.sdp is not None
        and not mky_matches([fp.claim() for fp in mky], sig.sdp)
    ):
        raise invalid_header("mky does not match the SDP fingerprints", Check.MKY)
    if sp.ppt == Ppt.SHAKEN and sp.claims.attest not in _ATTEST:
        raise invalid_passport("shaken attest must be A, B or C (RFC 8588 §4)")


def _check_offline(
    header: IdentityHeader, sp: SignedPassport, sig: _Signalling, policy: VerifyPolicy, now: int
) -> None:
    """RFC 8224 §6.2 steps 2 and 4 and the extensions' rules: everything that needs no
    certificate, so that a PASSporT failing here costs no fetch."""
    _check_alg(sp)
    _check_parties(sp.claims, sig)
    _check_fresh(sp.claims.iat, sig, policy, now)
    _check_extension(sp, sig)


def _check_online(sp: SignedPassport, cred: Credential, policy: VerifyPolicy) -> Trust:
    """RFC 8224 §6.2 steps 3 and 5 with the credential: trust, signature, authority."""
    trust = _establish_trust(cred, sp, policy)
    sp.verify(certs.check_signing_key(cred.chain[0]))
    _check_authority(sp, cred, policy)
    return trust


@functools.lru_cache(maxsize=256)  # one per signing certificate seen: a pure function
def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _result(
    index: int,
    header: IdentityHeader,
    sp: SignedPassport | None = None,
    cred: Credential | None = None,
    *,
    error: StirError | None = None,
    trust: Trust | None = None,
) -> PassportCheck:
    ppt = sp.ppt if sp is not None else header.ppt
    details: dict[str, Any] = {}
    if sp is not None:
        c = sp.claims
        details = {"orig": c.orig, "dest": c.dest.parties(), "iat": c.iat, "attest": c.attest}
        details.update(origid=c.origid, compact=sp.compact, div=c.div)
    if cred is not None:
        details["signer"] = _subject(cred.chain[0])
    if sp is not None and trust is not None and error is None:
        details.update(trust=trust, replay_id=signature_id(sp.signing_input, sp.signature))
    return PassportCheck(
        index=index,
        supported=ppt in SUPPORTED_PPT,
        form=Form.COMPACT if header.is_compact else Form.FULL,
        ppt=ppt,
        info=header.info,
        error=error,
        **details,
    )


@dataclass(frozen=True, slots=True)
class _Pending:
    """An Identity header that passed every offline check and awaits its credential."""

    index: int
    header: IdentityHeader
    passport: SignedPassport


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request after the offline checks: finished results and PASSporTs pending."""

    facts: SipFacts
    items: tuple[PassportCheck | _Pending, ...]
    failure: StirError | None = None  # the SIP facts themselves did not parse

    @property
    def uris(self) -> tuple[str, ...]:
        """The ``info`` URIs whose credentials :func:`finish` needs, in order, unique."""
        return tuple(dict.fromkeys(i.header.info for i in self.items if isinstance(i, _Pending)))

    def origs(self, uri: str) -> tuple[PartyId, ...]:
        """The ``orig`` claims of the pending PASSporTs signed with ``uri``'s credential:
        the identities a pin or a first use would vouch for."""
        pending = (i for i in self.items if isinstance(i, _Pending) and i.header.info == uri)
        return tuple(dict.fromkeys(i.passport.claims.orig for i in pending))


def _prepare_header(
    index: int, header: IdentityHeader, sig: _Signalling, policy: VerifyPolicy, now: int
) -> PassportCheck | _Pending:
    if header.ppt not in SUPPORTED_PPT:  # step 1: ignore unsupported ppt
        return _result(index, header)
    sp: SignedPassport | None = None
    try:
        sp = _passport(header, sig)
        if sp.ppt not in SUPPORTED_PPT:
            return _result(index, header, sp)
        _check_offline(header, sp, sig, policy, now)
    except StirError as exc:
        return _result(index, header, sp, error=exc)
    return _Pending(index, header, sp)


def prepare(facts: SipFacts, policy: VerifyPolicy, now: int) -> Prepared:
    """RFC 8224 §6.2 up to the credential: parse the signalling and every Identity
    header, and run the checks that need no certificate."""
    try:
        sig = _signalling(facts, policy)
    except StirError as exc:
        return Prepared(facts, (), exc)
    items: list[PassportCheck | _Pending] = []
    for index, item in enumerate(_parse_all(facts.identity)):
        if isinstance(item, StirError):
            items.append(PassportCheck(index=index, supported=True, error=item))
        else:
            items.append(_prepare_header(index, item, sig, policy, now))
    return Prepared(facts, tuple(items))


def _finish_one(
    item: _Pending, credentials: CredentialLookup, policy: VerifyPolicy
) -> PassportCheck:
    cred: Credential | None = None
    try:
        cred = _credential(item.header.info, credentials)
        trust = _check_online(item.passport, cred, policy)
    except StirError as exc:
        return _result(item.index, item.header, item.passport, cred, error=exc)
    return _result(item.index, item.header, item.passport, cred, trust=trust)


def finish(prepared: Prepared, credentials: CredentialLookup, policy: VerifyPolicy) -> Verification:
    """RFC 8224 §6.2 steps 3 and 5 with the credentials obtained, then §6.2.1."""
    if prepared.failure is not None:
        exc = prepared.failure
        return Verification(Verdict.INVALID, exc.status, exc.detail, ())
    checks = [
        _finish_one(item, credentials, policy) if isinstance(item, _Pending) else item
        for item in prepared.items
    ]
    return decide(link_diversions(checks), prepared.facts, policy)


def decide(checks: Sequence[PassportCheck], facts: SipFacts, policy: VerifyPolicy) -> Verification:
    """RFC 8224 §6.2.1 and §6.2.2, RFC 8862 §4.4."""
    supported = [c for c in checks if c.supported]
    if not checks or not supported:
        verdict = Verdict.NO_IDENTITY if not checks else Verdict.UNSUPPORTED
        status = (
            SipStatus.USE_IDENTITY_HEADER if not checks else SipStatus.USE_SUPPORTED_PASSPORT_FORMAT
        )
        code = status if policy.require_identity else None
        return Verification(
            verdict, code, None if code is None else "no usable Identity header", tuple(checks)
        )
    failed = [c for c in supported if c.error is not None]
    msec_failed = [c for c in failed if c.ppt == Ppt.MSEC and facts.dialog_forming]
    valid = [c for c in supported if c.error is None]
    if valid and not msec_failed:
        attest = min((c.attest for c in valid if c.attest), default=None)
        unchecked = (
            facts.sdp_unavailable and not facts.sdp and any(c.ppt == Ppt.MSEC for c in valid)
        )
        return Verification(Verdict.VALID, None, None, tuple(checks), attest, unchecked)
    worst = _pick_error(msec_failed or failed)
    return Verification(Verdict.INVALID, worst.status, worst.detail, tuple(checks))


def _links(div: PassportCheck, others: Sequence[PassportCheck]) -> bool:
    return any(
        o is not div and o.valid and o.orig == div.orig and div.div in o.dest for o in others
    )


def link_diversions(checks: Sequence[PassportCheck]) -> list[PassportCheck]:
    """RFC 8946 §4.2: every valid `div` PASSporT must link to a valid earlier PASSporT
    whose `dest` holds its `div` and whose `orig` equals its own; unlinked ones fail
    (repeated until stable, so a chain is only as good as its innermost link)."""
    out = list(checks)
    changed = True
    while changed:
        changed = False
        for i, check in enumerate(out):
            if check.valid and check.ppt == Ppt.DIV and not _links(check, out):
                error = invalid_header("div links to no PASSporT of this request", Check.DIVERSION)
                out[i] = replace(check, error=error)
                changed = True
    return out


def _pick_error(failed: list[PassportCheck]) -> StirError:
    """436 only when every header failed on its credential (RFC 8224 §6.2.2)."""
    errors = [c.error for c in failed if c.error is not None]
    not_436 = [e for e in errors if e.status is not SipStatus.BAD_IDENTITY_INFO]
    return (not_436 or errors)[0]


def verify_request(
    facts: SipFacts, credentials: CredentialLookup, policy: VerifyPolicy, now: int
) -> Verification:
    """Verify every Identity header of a request and decide (RFC 8224 §6.2)."""
    return finish(prepare(facts, policy, now), credentials, policy)
