"""The ``stird`` command line: offline tools for operators and tests.

    stird keygen  --out DIR [--type p256|x25519|mlkem768-x25519]
    stird cert    --key KEY [--tn N ...] [--tn-range START,COUNT ...] [--spc CODE]
                  [--uri URI ...] [--anonymous] [--days D] [--ca] [--issuer-key K
                  --issuer-cert C] --out CERT.pem
    stird sign    --key KEY --x5u URL --orig ID --dest ID [...] [--ppt msec|shaken|none]
                  [--attest A|B|C] [--origid UUID] [--sdp FILE] [--iat EPOCH] [--compact]
    stird verify  --identity VALUE [...] [--from ID] [--to ID] [--date HTTP-DATE]
                  [--sdp FILE] (--cert PEM | --trust-anchor PEM ... | --fetch ...)
                  [--now EPOCH] [--max-age SECONDS]
    stird decode  VALUE
    stird serve   [--config FILE] [--http|--jsonrpc|--agi HOST:PORT|off] [--state-dir DIR]
                  [--log-level L] [--log-file FILE] [--pid-file FILE]
    stird check-config [--config FILE]
    stird cps serve [--config FILE] [--listen HOST:PORT] [--state-dir DIR] [--redis URL]
    stird status  [--config FILE | --url URL] [--token-file FILE] [--json]
    stird calls   [--last N] [--call-id ID] [--verdict V] [--search TEXT] [--json] [...]

Exit status: 0 success (``verify``: valid), 1 ``verify`` not valid, 2 usage or input error,
141 stdout closed early (``| head``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import logging.handlers
import os
import ssl
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stird.adapters import enckeys
from stird.adapters import keyfiles as keys
from stird.adapters.certfetch import FetchPolicy, HttpCertificateFetcher
from stird.adapters.store_memory import MemoryStore
from stird.core import certs
from stird.core.errors import StirError
from stird.core.identity import parse_identity
from stird.core.passport import Attest, Ppt, decode_json
from stird.core.sign import SignRequest, sign_request
from stird.core.tn import parse_cli_id
from stird.core.verdict import Credential, SipFacts, Trust, VerifyPolicy
from stird.core.verify import credential_uris
from stird.services.certcache import CertificateCache
from stird.services.credentials import StaticCredentials
from stird.services.ports import CredentialProvider
from stird.services.status_expiry import ANCHOR, CREDENTIAL, THRESHOLDS, Expiry, not_after
from stird.services.verdicts import CallVerdict, ServicePolicy
from stird.services.verification import VerificationService
from stird.wiring import eventloop
from stird.wiring.asterisk import check_hep
from stird.wiring.cli_args import build_parser
from stird.wiring.config import Config, ConfigError, config_path, load_config, with_overrides
from stird.wiring.exposure import check_exposure, load_token
from stird.wiring.status_cli import StatusError, cmd_calls, cmd_status

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # as a process killed by SIGPIPE: `stird verify ... | head`


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit status 2."""


def _now() -> int:
    return int(time.time())


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from exc


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.type == "p256":
        private, public = keys.write_keypair(Path(args.out), force=args.force)
    else:  # an out-of-band encryption key (RFC 8816 §11)
        private, public = enckeys.write_enc_keypair(Path(args.out), args.type, force=args.force)
    print(json.dumps({"private_key": str(private), "public_key": str(public)}))
    return EXIT_OK


def _range(text: str) -> certs.TnRange:
    start, sep, count = text.partition(",")
    if not sep or not start or not count.isdigit():
        raise UsageError(f"--tn-range wants START,COUNT, not {text!r}")
    return certs.TnRange(parse_cli_id(start).value, int(count))


def cmd_cert(args: argparse.Namespace) -> int:
    key = keys.load_private_key(Path(args.key))
    now = _now()
    if args.anonymous:
        cert = certs.make_anonymous_cert(key, now=now, days=args.days)
    else:
        issuer_key = keys.load_private_key(Path(args.issuer_key)) if args.issuer_key else None
        issuer_cert = keys.load_cert(Path(args.issuer_cert)) if args.issuer_cert else None
        if (issuer_key is None) != (issuer_cert is None):
            raise UsageError("--issuer-key and --issuer-cert go together")
        cert = certs.make_stir_cert(
            key,
            now=now,
            days=args.days,
            tns=[parse_cli_id(t).value for t in args.tn],
            ranges=[_range(r) for r in args.tn_range],
            spcs=args.spc,
            uris=args.uri,
            issuer_key=issuer_key,
            issuer_cert=issuer_cert,
            ca=args.ca,
        )
    keys.write_public_file(Path(args.out), certs.cert_to_pem(cert))
    return EXIT_OK


def _ppt(text: str) -> Ppt | None:
    return None if text == "none" else Ppt(text)


def cmd_sign(args: argparse.Namespace) -> int:
    key = keys.load_private_key(Path(args.key))
    ppt = _ppt(args.ppt)
    origid = args.origid
    if ppt == Ppt.SHAKEN and origid is None:
        origid = str(uuid.uuid4())  # RFC 8588 §10: a unique origid per call
    request = SignRequest(
        orig=parse_cli_id(args.orig),
        dest=tuple(parse_cli_id(d) for d in args.dest),
        iat=args.iat if args.iat is not None else _now(),
        ppt=ppt,
        attest=(args.attest or Attest.A.value) if ppt == Ppt.SHAKEN else args.attest,
        origid=origid,
        sdp=_read_text(args.sdp, "SDP") if args.sdp else None,
        compact=args.compact,
    )
    _, header = sign_request(request, key, args.x5u)
    print(header.format())
    return EXIT_OK


def _credentials(args: argparse.Namespace, facts: SipFacts) -> dict[str, Credential | StirError]:
    anchors = [c for path in args.trust_anchor for c in keys.load_certs(Path(path))]
    if args.cert:
        chain = keys.load_certs(Path(args.cert))
        # named on the command line: the operator's own anchor unless anchors are given
        cred = Credential(chain=chain, trust=None if anchors else Trust.ANCHOR)
        return dict.fromkeys(credential_uris(facts), cred)
    found: dict[str, Credential | StirError] = {}
    for uri in credential_uris(facts):
        found[uri] = keys.credential_from_file_uri(uri)
    return found


def _fetch_policy(args: argparse.Namespace) -> FetchPolicy:
    try:
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in args.allow_network)
    except ValueError as exc:
        raise UsageError(f"--allow-network: {exc}") from exc
    return FetchPolicy(
        timeout=args.timeout,
        allow_http=args.allow_http,
        allow_networks=networks,
        allow_hosts=tuple(args.allow_host),
    )


async def _run_verify(
    args: argparse.Namespace, facts: SipFacts, policy: ServicePolicy
) -> CallVerdict:
    now = args.now if args.now is not None else _now()
    fetcher: HttpCertificateFetcher | None = None
    provider: CredentialProvider
    if args.fetch:
        tls = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
        fetcher = HttpCertificateFetcher(_fetch_policy(args), ssl_context=tls)
        provider = CertificateCache(fetcher)
    else:
        provider = StaticCredentials(_credentials(args, facts))
    service = VerificationService(provider, MemoryStore(), policy, clock=lambda: now)
    try:
        return await service.verify(facts)
    finally:
        if fetcher is not None:
            await fetcher.close()


def cmd_verify(args: argparse.Namespace) -> int:
    if not (args.cert or args.trust_anchor or args.fetch):
        raise UsageError("verify needs --cert, --trust-anchor or --fetch")
    if args.cert and args.fetch:
        raise UsageError("--cert and --fetch exclude each other")
    facts = SipFacts(
        identity=tuple(args.identity),
        from_=args.from_,
        to=args.to,
        date=args.date,
        sdp=_read_text(args.sdp, "SDP") if args.sdp else None,
    )
    anchors = tuple(c for path in args.trust_anchor for c in keys.load_certs(Path(path)))
    verify = VerifyPolicy(anchors=anchors, max_age=args.max_age, default_region=args.region)
    # One-shot: nothing to remember between runs, so no TOFU pins and no replay state.
    policy = ServicePolicy(verify=verify, tofu=False, replay=False, deadline=args.timeout + 1)
    result = asyncio.run(_run_verify(args, facts, policy))
    print(json.dumps(result.to_json(), indent=2))
    return EXIT_OK if result.verdict == "valid" else EXIT_INVALID


def cmd_decode(args: argparse.Namespace) -> int:
    out: list[dict[str, Any]] = []
    value = args.value.strip()
    if ";" not in value and value.count(".") == 2 and not value.startswith(".."):
        header_json, claims_json = decode_json(value)  # a bare full-form PASSporT
        print(json.dumps({"header": header_json, "claims": claims_json}, indent=2))
        return EXIT_OK
    for header in parse_identity(value):
        entry: dict[str, Any] = {"info": header.info, "alg": header.alg, "ppt": header.ppt}
        entry["params"] = dict(header.params)
        if header.is_compact:
            entry["form"] = "compact"
        else:
            entry["form"] = "full"
            entry["header"], entry["claims"] = decode_json(header.digest)
        out.append(entry)
    print(json.dumps(out[0] if len(out) == 1 else out, indent=2, ensure_ascii=False))
    return EXIT_OK


def _load(args: argparse.Namespace) -> Config:
    config = with_overrides(
        load_config(args.config),
        http=args.http,
        jsonrpc=args.jsonrpc,
        agi=args.agi,
        state_dir=args.state_dir,
    )
    check_exposure(config.server)
    check_hep(config)  # [asterisk] hep: loopback like FastAGI
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    # the offline tools need none of the daemon
    from stird.wiring.app import serve  # noqa: PLC0415
    from stird.wiring.workers import run_workers, worker_count  # noqa: PLC0415

    count = worker_count(config)
    _serve_logging(args.log_level or config.log_level, args.log_file, pids=count > 1)
    pid_file = Path(args.pid_file) if args.pid_file else None
    code = EXIT_OK
    try:
        if pid_file is not None:
            _write_pid(pid_file)
        if count > 1:
            code = run_workers(config, lambda: _load(args), count)
        else:
            eventloop.run(serve(config, lambda: _load(args)))
    except (OSError, ConfigError) as exc:  # a port is taken, the state dir read-only...
        raise UsageError(str(exc)) from None
    finally:
        if pid_file is not None:
            _remove_pid(pid_file)
    return code


def _serve_logging(level: str, log_file: str | None, *, pids: bool = False) -> None:
    """stderr (journald stamps it), or ``--log-file``: stamped lines, the file reopened
    when logrotate moves it away (WatchedFileHandler). ``pids``: several worker
    processes write there, each line says which."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if pids:
        fmt = "%(levelname)s %(name)s[%(process)d]: %(message)s"
    handlers: list[logging.Handler] | None = None
    if log_file is not None:
        try:
            handlers = [logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")]
        except OSError as exc:
            raise UsageError(f"--log-file: cannot open {log_file}: {exc.strerror}") from None
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, handlers=handlers)


def _write_pid(path: Path) -> None:
    """Write this process's id (atomically: a reader never sees a half-written file)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        partial.write_text(f"{os.getpid()}\n", encoding="ascii")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"--pid-file: cannot write {path}: {exc.strerror}") from None


def _remove_pid(path: Path) -> None:
    """Remove the PID file if it still names this process (not a successor's)."""
    try:
        if path.read_text(encoding="ascii").strip() == str(os.getpid()):
            path.unlink()
    except (OSError, UnicodeDecodeError):
        pass


def _credentials_line(config: Config) -> str:
    """What the daemon would sign with (app.signing_credentials)."""
    if not config.credentials:
        dev = config.server.state_dir / "dev"
        return f"no [[credential]]: the daemon signs with the development credential in {dev}"
    names = ", ".join(c.name for c in config.credentials)
    return f"{len(config.credentials)} credential(s): {names}"


def _expiry_warnings(config: Config, now: float) -> list[str]:
    """Credentials and trust anchors that expire within 30 days (or have expired)."""
    found: list[Expiry] = []
    for cred in config.credentials:
        try:
            found.append(Expiry(CREDENTIAL, cred.name, not_after(keys.load_certs(cred.cert)[0])))
        except keys.KeyFileError:
            continue  # a problem already
    for anchor in config.verify.trust_anchors:
        try:
            certs_ = keys.load_certs(anchor)
        except keys.KeyFileError:
            continue
        found += [Expiry(ANCHOR, c.subject.rfc4514_string(), not_after(c)) for c in certs_]
    return [
        f"{item.describe(now)}{': signing with it is refused' if item.days_left(now) < 0 else ''}"
        for item in found
        if item.days_left(now) < THRESHOLDS[0]
    ]


def _file_problems(config: Config) -> list[str]:
    """What parsing cannot see: listeners' exposure, the token, keys and certificates."""
    problems: list[str] = []
    try:
        check_exposure(config.server)
        check_hep(config)
        if config.server.token_file is not None:
            load_token(config.server.token_file)
    except ConfigError as exc:
        problems.extend(exc.problems)
    for index, cred in enumerate(config.credentials):
        where = f"[[credential]] #{index + 1} ({cred.name})"
        try:
            key = keys.load_private_key(cred.key)
            chain = keys.load_certs(cred.cert)
        except keys.KeyFileError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if chain[0].public_key() != key.public_key():
            problems.append(f"{where} key: does not match the certificate {cred.cert}")
    for anchor in config.verify.trust_anchors:
        try:
            keys.load_certs(anchor)
        except keys.KeyFileError as exc:
            problems.append(f"[verify] trust_anchors: {exc}")
    return problems


def cmd_check_config(args: argparse.Namespace) -> int:
    """Every problem of the file at once, one a line (the same checks as serve and SIGHUP)."""
    path = config_path(args.config)
    try:
        config = load_config(args.config)
        problems = _file_problems(config)
    except ConfigError as exc:
        problems = list(exc.problems)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise UsageError(f"{path or 'embedded default'}: {len(problems)} problem(s)\n{lines}")
    for warning in _expiry_warnings(config, time.time()):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path or 'embedded default'}: OK ({_credentials_line(config)})")
    return EXIT_OK


def cmd_cps(args: argparse.Namespace) -> int:
    """``stird cps serve``: the standalone CPS until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=getattr(logging, (args.log_level or "info").upper()),
        format="%(levelname)s %(name)s: %(message)s",
    )
    from stird.wiring.cps_app import cps_main  # noqa: PLC0415 - the offline tools need none of it

    state = args.state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return cps_main(args.config, args.listen, state or "/var/lib/stird-cps", args.redis)


def _parser() -> argparse.ArgumentParser:
    return build_parser(
        keygen=cmd_keygen, cert=cmd_cert, sign=cmd_sign, verify=cmd_verify, decode=cmd_decode,
        serve=cmd_serve, check_config=cmd_check_config, cps=cmd_cps, status=cmd_status,
        calls=cmd_calls,
    )  # fmt: skip


def _quiet_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the final flush at exit has
    nowhere to fail (Python's documented way, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured in-process): nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except (UsageError, keys.KeyFileError, StatusError) as exc:
        print(f"stird {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StirError as exc:
        print(f"stird {args.command}: {exc.code} {exc.reason}: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
