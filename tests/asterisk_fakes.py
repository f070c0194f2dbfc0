"""Fake Asterisk peers that behave like Asterisk 22.10.1 in the shared transcripts
(../shared/asterisk/transcripts): the FastAGI client side (fastagi-sign.txt,
fastagi-verify.txt, fastagi-inbound-probe.txt) and an AMI server (ami-session.txt).

FastAGI: the 22-line ``agi_*`` block in two writes split before ``agi_extension``; bare LF;
``200 result=1 (value)`` / ``200 result=0``; GET VARIABLE cut at 1023 characters and
``200 result=0`` for a longer function value; GET FULL VARIABLE whole; a multi-line 520
whose second part comes 40 ms later; 510; 511 on a dead channel; an unsolicited ``HANGUP``;
``HANGUP`` again when the server closes. AMI: the one-line banner, CRLF frames, a reply
split over two writes, FullyBooted after Login, ``No such channel``, Hangup events with
``TechCause`` after PJSIPHangup, Goodbye on Logoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field

# --- FastAGI ------------------------------------------------------------------------------

ENV_KEYS = (
    "agi_network", "agi_network_script", "agi_request", "agi_channel", "agi_language",
    "agi_type", "agi_uniqueid", "agi_version", "agi_callerid", "agi_calleridname",
    "agi_callingpres", "agi_callingani2", "agi_callington", "agi_callingtns", "agi_dnid",
    "agi_rdnis", "agi_context", "agi_extension", "agi_priority", "agi_enhanced",
    "agi_accountcode", "agi_threadid",
)  # fmt: skip
SPLIT_BEFORE = "agi_extension"  # the second TCP read starts here (fastagi-sign.txt)
USAGE_1 = b"520-Invalid command syntax.  Proper usage follows:\n"
USAGE_2 = (
    b"Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set. "
    b"Returns <literal>1</literal> if <replaceable>variablename</replaceable> is set and "
    b"returns the variable in parentheses.\n"
    b"Example return code: 200 result=1 (testvariable)\n"
    b"520 End of proper usage.\n"
)
DEAD = b"511 Command Not Permitted on a dead channel or intercept routine\n"


def predial_env(script: str, **extra: str) -> dict[str, str]:
    """The block of the /sign session in the Dial b() pre-dial handler (outgoing channel)."""
    env = {
        "agi_network": "yes", "agi_network_script": script,
        "agi_request": f"agi://127.0.0.1:4573/{script}", "agi_channel": "PJSIP/trunk-00000010",
        "agi_language": "en", "agi_type": "PJSIP", "agi_uniqueid": "stird-lab-1795328781.16",
        "agi_version": "22.10.1", "agi_callerid": "+15551230001", "agi_calleridname": "unknown",
        "agi_callingpres": "0", "agi_callingani2": "0", "agi_callington": "0",
        "agi_callingtns": "0", "agi_dnid": "unknown", "agi_rdnis": "unknown",
        "agi_context": "stird-predial", "agi_extension": "s", "agi_priority": "2",
        "agi_enhanced": "0.0", "agi_accountcode": "", "agi_threadid": "140338123527872",
    }  # fmt: skip
    return {**env, **extra}


def inbound_env(script: str, **extra: str) -> dict[str, str]:
    """The block of /verify session A (inbound channel, inside Gosub(stird-verify,s,1))."""
    env = predial_env(script)
    env.update(
        agi_channel="PJSIP/carrier-00000011", agi_uniqueid="stird-lab-1795328784.17",
        agi_callerid="+15552220000", agi_calleridname="Carrier", agi_dnid="+15557770001",
        agi_context="stird-verify", agi_threadid="140338121991872",
    )  # fmt: skip
    return {**env, **extra}


def env_chunks(env: dict[str, str]) -> tuple[bytes, bytes]:
    keys = [k for k in ENV_KEYS if k in env] + [k for k in env if k not in ENV_KEYS]
    lines = [f"{k}: {env[k]}\n" for k in keys]
    cut = keys.index(SPLIT_BEFORE) if SPLIT_BEFORE in keys else len(keys)
    return "".join(lines[:cut]).encode(), ("".join(lines[cut:]) + "\n").encode()


def agi_parse(line: str) -> list[str]:
    """res_agi's parse_args: blanks split outside quotes, backslash escapes a character."""
    args: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for char in line:
        if escaped or (char not in ' \t"\\'):
            current = current if current is not None else []
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            current = current if current is not None else []
        elif quoted:
            assert current is not None
            current.append(char)
        elif current is not None:
            args.append("".join(current))
            current = None
    if current is not None:
        args.append("".join(current))
    return args


_HEADER_READ = re.compile(r"PJSIP_HEADER\(read,([^,()]+)(?:,([^()]*))?\)")
_HEADERS = re.compile(r"PJSIP_HEADERS\(([^()]*)\)")
_INNERMOST = re.compile(r"\$\{([^${}]*)\}")


@dataclass
class FakeChannel:
    """One Asterisk channel running ``AGI(agi://…)``."""

    env: dict[str, str]
    variables: dict[str, str] = field(default_factory=dict)  # incl. function reads
    headers: list[tuple[str, str]] = field(default_factory=list)  # the received INVITE's
    hangup_before: int | None = None  # unsolicited HANGUP before this command's reply
    dead: bool = False
    commands: list[str] = field(default_factory=list)
    added_headers: list[tuple[str, str]] = field(default_factory=list)

    def lookup(self, name: str) -> str | None:
        if match := _HEADER_READ.fullmatch(name):
            wanted, index = match[1].lower(), (match[2] or "1")
            if not index.isdigit():
                return None
            values = [v for k, v in self.headers if k.lower() == wanted]
            n = max(int(index), 1)
            return values[n - 1] if n <= len(values) else None
        if name == "CHANNEL(pjsip,call-id)":  # fact 26: the same string as the header
            return next((v for k, v in self.headers if k.lower() == "call-id"), None)
        if match := _HEADERS.fullmatch(name):
            names = [k for k, _ in self.headers if k.lower().startswith(match[1].lower())]
            return ",".join(names) or None
        return self.variables.get(name)

    def expand(self, text: str) -> str:
        for _ in range(16):
            text, count = _INNERMOST.subn(lambda m: self.lookup(m[1]) or "", text)
            if not count:
                break
        return text

    def answer(self, command: str) -> list[bytes]:
        """The reply chunks Asterisk writes for one command."""
        args = agi_parse(command)
        words = [a.upper() for a in args[:3]]
        if words[:2] == ["GET", "VARIABLE"]:
            return [USAGE_1, USAGE_2] if len(args) < 3 else [self._get(args[2])]
        if words[:3] == ["GET", "FULL", "VARIABLE"] and len(args) >= 4:
            return [f"200 result=1 ({self.expand(args[3])})\n".encode()]
        if words[:2] == ["SET", "VARIABLE"] and len(args) >= 4:
            self.variables[args[2]] = args[3]
            if args[2].startswith("PJSIP_HEADER(add,"):
                self.added_headers.append((args[2][17:-1], args[3]))
            return [b"200 result=1\n"]
        if words[:1] == ["VERBOSE"]:
            return [b"200 result=1\n"]
        if words[:1] == ["NOOP"]:
            return [b"200 result=0\n"]
        if words[:1] == ["ANSWER"] or words[:2] == ["STREAM", "FILE"]:
            return [DEAD if self.dead else b"200 result=0\n"]
        return [b"510 Invalid or unknown command\n"]

    def _get(self, name: str) -> bytes:
        value = self.lookup(name)
        if value is None or ("(" in name and len(value) > 1023):
            return b"200 result=0\n"  # fact 5: a longer function value reads as unset
        return f"200 result=1 ({value[:1023]})\n".encode()


async def run_agi(
    address: tuple[str, int], channel: FakeChannel, *, read_timeout: float = 5.0
) -> FakeChannel:
    """Connect like ``AGI(agi://host:port/script)`` and answer until stird closes."""
    reader, writer = await asyncio.open_connection(*address)
    first, second = env_chunks(channel.env)
    try:
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.001)
        writer.write(second)
        await writer.drain()
        while line := await asyncio.wait_for(reader.readline(), read_timeout):
            command = line.decode().rstrip("\n")
            if channel.hangup_before == len(channel.commands):
                writer.write(b"HANGUP\n")
                channel.dead = True
            channel.commands.append(command)
            for index, chunk in enumerate(channel.answer(command)):
                if index:
                    await asyncio.sleep(0.04)  # the 520 usage text came 40 ms later
                writer.write(chunk)
            await writer.drain()
        writer.write(b"HANGUP\n")  # what Asterisk sends when the server has closed
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return channel


# --- AMI ----------------------------------------------------------------------------------

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
SIP_NAMES = {"USE_IDENTITY_HEADER": "428", "INVALID_IDENTITY_HEADER": "438"}


def frame(*pairs: tuple[str, str]) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in pairs) + "\r\n").encode()


def channel_fields(
    channel: str,
    uniqueid: str,
    *,
    linkedid: str | None = None,
    state: tuple[str, str] = ("4", "Ring"),
    caller: tuple[str, str] = ("<unknown>", "<unknown>"),
    connected: tuple[str, str] = ("<unknown>", "<unknown>"),
    context: str = "stird-inbound",
    exten: str = "s",
    priority: str = "1",
    prefix: str = "",
) -> list[tuple[str, str]]:
    """The channel snapshot every call event carries, in Asterisk's order."""
    pairs = [
        ("Channel", channel), ("ChannelState", state[0]), ("ChannelStateDesc", state[1]),
        ("CallerIDNum", caller[0]), ("CallerIDName", caller[1]),
        ("ConnectedLineNum", connected[0]), ("ConnectedLineName", connected[1]),
        ("Language", "en"), ("AccountCode", ""), ("Context", context), ("Exten", exten),
        ("Priority", priority), ("Uniqueid", uniqueid), ("Linkedid", linkedid or uniqueid),
    ]  # fmt: skip
    return [(prefix + k, v) for k, v in pairs]


def event(name: str, privilege: str, *pairs: tuple[str, str]) -> bytes:
    return frame(("Event", name), ("Privilege", privilege), ("SystemName", "stird-lab"), *pairs)


def parse_frame(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode().split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep:
            out[key] = value
    return out


class FakeAmi:
    """An Asterisk manager on 127.0.0.1 that answers like ami-session.txt."""

    def __init__(self, *, user: str = "stird", secret: str = "stird-ami-secret") -> None:
        self.user, self.secret = user, secret
        self.port = 0
        self.channels: dict[str, list[tuple[str, str]]] = {}  # name -> channel_fields(...)
        self.received: list[dict[str, str]] = []
        self.logins = 0
        self.silent: set[str] = set()  # actions (lower case) left unanswered
        self.echo_event_first = False  # a UserEvent carrying the ActionID before the reply
        self.banner = BANNER
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.drop()

    async def drop(self) -> None:
        """Close every client connection (Asterisk restarting, a network cut)."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        await asyncio.sleep(0)

    async def send(self, data: bytes, *, split: int | None = None) -> None:
        """Write to every client, optionally in two writes split at byte ``split``."""
        parts = [data] if split is None else [data[:split], data[split:]]
        for writer in list(self._writers):
            for index, part in enumerate(parts):
                if index:
                    await asyncio.sleep(0.01)
                writer.write(part)
            await writer.drain()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        writer.write(self.banner)
        try:
            while True:
                action = parse_frame(await reader.readuntil(b"\r\n\r\n"))
                self.received.append(action)
                if not await self._answer(action, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, action: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        name, aid = action.get("Action", "").lower(), action.get("ActionID", "")
        if name in self.silent:
            return True
        if self.echo_event_first and name not in ("login", "ping"):
            writer.write(event("UserEvent", "user,all", ("UserEvent", "StirdVerdict"),
                               ("ActionID", aid)))  # fmt: skip
        if name == "login":
            return await self._login(action, aid, writer)
        if name == "ping":
            writer.write(frame(("Response", "Success"), ("ActionID", aid), ("Ping", "Pong"),
                               ("Timestamp", "1795328780.057000")))  # fmt: skip
        elif name in ("hangup", "pjsiphangup"):
            await self._hangup(name, action, aid, writer)
        elif name == "logoff":
            writer.write(frame(("Response", "Goodbye"), ("ActionID", aid),
                               ("Message", "Thanks for all the fish.")))  # fmt: skip
            return False
        else:
            writer.write(frame(("Response", "Error"), ("ActionID", aid),
                               ("Message", "Invalid/unknown command")))  # fmt: skip
        await writer.drain()
        return True

    async def _login(self, action: dict[str, str], aid: str, writer: asyncio.StreamWriter) -> bool:
        if (action.get("Username"), action.get("Secret")) != (self.user, self.secret):
            writer.write(frame(("Response", "Error"), ("ActionID", aid),
                               ("Message", "Authentication failed")))  # fmt: skip
            await writer.drain()
            return False
        self.logins += 1
        writer.write(frame(("Response", "Success"), ("ActionID", aid),
                           ("Message", "Authentication accepted")))  # fmt: skip
        await writer.drain()
        writer.write(event("FullyBooted", "system,all", ("Uptime", "336"), ("LastReload", "336"),
                           ("Status", "Fully Booted")))  # fmt: skip
        return True

    async def _hangup(
        self, name: str, action: dict[str, str], aid: str, writer: asyncio.StreamWriter
    ) -> None:
        fields = self.channels.pop(action.get("Channel", ""), None)
        if fields is None:
            writer.write(frame(("Response", "Error"), ("ActionID", aid),
                               ("Message", "No such channel")))  # fmt: skip
            return
        head = f"Response: Success\r\nActionID: {aid}\r\n".encode()  # split as in fact 8
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"Message: Channel Hungup\r\n\r\n")
        cause = action.get("Cause", "16")
        if name == "pjsiphangup":
            tech = [("TechCause", SIP_NAMES.get(cause, cause))]
            writer.write(event("HangupRequest", "call,all", *fields, ("Cause", "127"), *tech))
            writer.write(event("SoftHangupRequest", "call,all", *fields, ("Cause", "16"), *tech))
            writer.write(event("Hangup", "call,all", *fields, ("Cause", "127"),
                               ("Cause-txt", "Interworking, unspecified"), *tech))  # fmt: skip
        else:
            writer.write(event("SoftHangupRequest", "call,all", *fields, ("Cause", cause)))
            writer.write(event("Hangup", "call,all", *fields, ("Cause", cause),
                               ("Cause-txt", "Normal Clearing")))  # fmt: skip
