"""Real Kamailio 5.6, SIPp and stird on loopback for the Kamailio integration tests.

Everything is started by the fixtures on free ports of 127.0.0.1 and killed at teardown:

* stird: ``stird serve`` from this virtualenv with a temporary state dir (embedded
  development credential) and, optionally, a TOML config; ready when ``GET /healthz``
  answers 200.
* Kamailio: ``integrations/kamailio/kamailio.cfg`` (which includes ``stird.cfg``) with
  ``-A`` overrides for the listen sockets, stird's address, the next hop and the
  outbound source; its own run dir (jsonrpcs socket, ctl socket) and working dir. Its
  stderr goes straight to a file (no logger process between them: a logger child makes
  Kamailio's main process wait for it forever on SIGTERM). Ready when janssonrpcc has
  connected to stird.
* Peers: found by tests/peers.py (Debian location, then PATH; Kamailio's module
  directory from ``kamailio -I``); a missing one fails under ``CI``, skips otherwise.
* SIPp: the UAS (next hop) in the background, the UAC in the foreground, each with
  ``-trace_msg`` / ``-trace_logs`` files the tests read.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers import kamailio_module_dir, missing, require_peer

REPO = Path(__file__).resolve().parents[2]
KAM_DIR = REPO / "integrations" / "kamailio"
SIPP_DIR = KAM_DIR / "sipp"
STIRD = Path(sys.executable).parent / "stird"
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------- prerequisites

MODULES_NEEDED = (
    ("janssonrpcc.so", "kamailio-extra-modules"),
    ("jansson.so", "kamailio-extra-modules"),
    ("http_client.so", "kamailio-utils-modules"),
)


@dataclass(frozen=True)
class Tools:
    """Where the peers are (tests/peers.py finds them) and Kamailio's module directory."""

    kamailio: str
    sipp: str
    kamcli: str
    modules: Path


@functools.cache
def tools() -> Tools:
    """The peers of these tests; a missing one fails the test under CI, skips it otherwise."""
    kamailio = require_peer("kamailio")
    sipp, kamcli = require_peer("sipp"), require_peer("kamcli")
    modules = kamailio_module_dir(kamailio)
    for module, package in MODULES_NEEDED:
        if not (modules / module).exists():
            missing(f"{modules / module} missing (Debian package {package})")
    if not STIRD.exists():
        missing(f"{STIRD} missing (pip install -e .)")
    return Tools(kamailio, sipp, kamcli, modules)


# ---------------------------------------------------------------------------- small helpers


def wait_until(what: str, check: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive ports free for both UDP and TCP on 127.0.0.1."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 60000, 4)
        span = range(base, base + count)
        if any(p in _handed_out for p in span):
            continue
        if all(_bindable(p, socket.SOCK_DGRAM) and _bindable(p, socket.SOCK_STREAM) for p in span):
            _handed_out.update(span)
            return base
    raise RuntimeError("no free ports")


def udp_bound(port: int) -> bool:
    """Someone listens on UDP port ``port`` (read from /proc, without touching the port)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = [line.split() for line in Path(table).read_text().splitlines()[1:]]
        except OSError:
            continue
        if any(len(row) > 1 and int(row[1].rsplit(":", 1)[1], 16) == port for row in rows):
            return True
    return False


class Proc:
    """A child process in its own session, so teardown can end it and its children."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGCONT)
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
            except ProcessLookupError:
                pass
        # children left in the group (Kamailio's workers) after the leader exited
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._out.close()
        return self.popen.returncode


# ---------------------------------------------------------------------------- stird


@dataclass
class Stird:
    dir: Path
    http_port: int
    jsonrpc_port: int
    agi_port: int
    config: Path | None
    proc: Proc | None = None

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def dev_key(self) -> Path:
        return self.state_dir / "dev" / "private.pem"

    def start(self) -> Stird:
        argv = [str(STIRD), "serve", "--state-dir", str(self.state_dir)]
        argv += ["--http", f"{HOST}:{self.http_port}", "--jsonrpc", f"{HOST}:{self.jsonrpc_port}"]
        argv += ["--agi", f"{HOST}:{self.agi_port}"]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        self.proc = Proc("stird", argv, self.dir / "stird.log")
        wait_until("stird /healthz", self._healthy, 20)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise AssertionError(f"stird exited:\n{self.proc.text()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://{HOST}:{self.http_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def cli(self, *argv: str) -> str:
        done = subprocess.run(
            [str(STIRD), *argv], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, f"stird {argv[0]} failed: {done.stderr}"
        return done.stdout


def new_stird(where: Path, config: str | None = None) -> Stird:
    where.mkdir(parents=True, exist_ok=True)
    path = None
    if config is not None:
        path = where / "stird.toml"
        path.write_text(config)
    base = free_ports(3)
    return Stird(where, base, base + 1, base + 2, path).start()


# ---------------------------------------------------------------------------- Kamailio


@dataclass
class Kamailio:
    dir: Path
    sip_port: int
    rpc_port: int
    stird: Stird
    next_hop_port: int
    outbound_port: int
    defines: dict[str, str] = field(default_factory=dict)
    cfg: str = "kamailio.cfg"  # or "kamailio-http.cfg" (http_client, synchronous)
    proc: Proc | None = None

    @property
    def asynchronous(self) -> bool:
        return self.cfg == "kamailio.cfg"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def rpc_socket(self) -> Path:
        return self.run_dir / "kamailio_rpc.sock"

    def argv(self) -> list[str]:
        defines = {
            "LISTEN": f"udp:{HOST}:{self.sip_port}",
            "RPC_LISTEN": f"tcp:{HOST}:{self.rpc_port}",
            "STIRD_ADDR": f'"{HOST}"',
            "STIRD_PORT": f'"{self.stird.jsonrpc_port}"',
            "NEXT_HOP": f'"sip:{HOST}:{self.next_hop_port}"',
            "OUTBOUND_SRC": f'"{HOST}:{self.outbound_port}"',
            "CTL_SOCK": f'"unix:{self.run_dir}/kamailio_ctl"',
            "STIRD_URL": f'"http://{HOST}:{self.stird.http_port}"',
            **self.defines,
        }
        argv = [tools().kamailio, "-f", str(KAM_DIR / self.cfg), "-DD", "-E"]
        argv += ["-L", str(tools().modules)]
        argv += ["-Y", str(self.run_dir), "-w", str(self.dir), "-m", "64", "-M", "16"]
        for name, value in defines.items():
            argv += ["-A", f"{name}={value}"]
        return argv

    def start(self) -> Kamailio:
        tools()  # before anything starts: a missing peer fails (CI) or skips here
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.proc = Proc("kamailio", self.argv(), self.dir / "kamailio.log", cwd=self.dir)
        wait_until("Kamailio connected to stird", self._ready, 20)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise AssertionError(f"kamailio exited:\n{self.proc.text()[-4000:]}")
        if not self.asynchronous:
            return udp_bound(self.sip_port)
        connected = f"Connected to host {HOST}:{self.stird.jsonrpc_port}" in self.proc.text()
        return connected and udp_bound(self.sip_port) and self.rpc_socket.exists()

    def log(self) -> str:
        assert self.proc is not None
        return self.proc.text()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kamcli(self, *argv: str) -> Any:
        """Run kamcli against this instance's jsonrpcs datagram socket; the JSON answer."""
        ini = self.dir / "kamcli.ini"  # the shipped file, pointed at this run dir
        ini.write_text(
            (KAM_DIR / "kamcli.ini").read_text().replace("/run/kamailio", str(self.run_dir))
        )
        done = subprocess.run(
            [tools().kamcli, "--no-default-configs", "-c", str(ini), *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=self.dir,
        )
        assert done.returncode == 0, f"kamcli {argv} failed: {done.stdout}\n{done.stderr}"
        start = done.stdout.find("{")
        assert start >= 0, f"kamcli {argv}: no JSON in {done.stdout!r}"
        return json.loads(done.stdout[start:])


# ---------------------------------------------------------------------------- SIPp


@dataclass
class SippRun:
    """What one SIPp instance saw: exit code, its <log> lines, its messages."""

    name: str
    returncode: int | None
    logs: str
    messages: str
    screen: str

    def finals(self) -> list[int]:
        return [int(m) for m in re.findall(r" final (\d{3})", self.logs)]

    def received(self) -> list[tuple[float, str]]:
        return _messages(self.messages, "received")

    def sent(self) -> list[tuple[float, str]]:
        return _messages(self.messages, "sent")

    def received_requests(self, method: str) -> list[str]:
        return [m for _, m in self.received() if m.startswith(f"{method} ")]

    def received_statuses(self) -> list[int]:
        return [int(m.split()[1]) for _, m in self.received() if m.startswith("SIP/2.0 ")]

    def describe(self) -> str:
        return (
            f"--- {self.name} rc={self.returncode}\n--- logs:\n{self.logs}\n"
            f"--- messages:\n{self.messages[-6000:]}\n--- screen:\n{self.screen[-3000:]}"
        )


# -trace_msg: "-----… 2026-11-22 07:04:30.844220\nUDP message received [982] bytes :\n\n<message>"
_MSG_HEAD = re.compile(
    r"^-{3,} \d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d\.\d+)\r?\n\w+ message (sent|received)[^\n]*\n",
    re.M,
)


def _messages(text: str, direction: str) -> list[tuple[float, str]]:
    """(seconds of the day, message text) of each message SIPp traced in one direction."""
    heads = list(_MSG_HEAD.finditer(text))
    out = []
    for index, head in enumerate(heads):
        end = heads[index + 1].start() if index + 1 < len(heads) else len(text)
        if head[4] == direction:
            stamp = int(head[1]) * 3600 + int(head[2]) * 60 + float(head[3])
            out.append((stamp, text[head.end() : end].lstrip("\r\n")))
    return out


def header_values(message: str, name: str) -> list[str]:
    """Every value of header ``name`` in one SIP message (exact name, case-insensitive)."""
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0]
    prefix = name.lower() + ":"
    return [
        line.split(":", 1)[1].strip()
        for line in head.split("\n")[1:]
        if line.lower().startswith(prefix)
    ]


def body_of(message: str) -> str:
    parts = message.replace("\r\n", "\n").split("\n\n", 1)
    return parts[1] if len(parts) == 2 else ""


class Sipp:
    """Starts SIPp processes in a test's directory."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.count = 0
        self.running: list[Proc] = []

    def _argv(
        self, name: str, scenario: str, port: int, keys: dict[str, str], extra: list[str]
    ) -> tuple[list[str], Path, Path]:
        logs, messages = self.where / f"{name}.logs", self.where / f"{name}.messages"
        media = free_ports(4)
        argv = [tools().sipp, "-sf", str(SIPP_DIR / scenario), "-i", HOST, "-p", str(port)]
        argv += ["-mp", str(media), "-m", "1", "-nostdin", "-timeout", "20s"]
        argv += [
            "-trace_msg",
            "-message_file",
            str(messages),
            "-trace_logs",
            "-log_file",
            str(logs),
        ]
        argv += ["-trace_err", "-error_file", str(self.where / f"{name}.errors")]
        for key, value in keys.items():
            argv += ["-key", key, value]
        return argv + extra, logs, messages

    def uas(self, port: int, scenario: str = "uas.xml") -> Proc:
        self.count += 1
        name = f"uas{self.count}"
        argv, _, _ = self._argv(name, scenario, port, {}, [])
        proc = Proc(name, argv, self.where / f"{name}.screen")
        self.running.append(proc)

        def listening() -> bool:
            if not proc.alive():
                raise AssertionError(f"SIPp UAS exited:\n{self._result(name, None).describe()}")
            return udp_bound(port)

        wait_until("SIPp UAS listening", listening, 10)
        return proc

    def finish(self, proc: Proc, timeout: float = 10.0, kill: bool = False) -> SippRun:
        if kill:
            proc.stop()
        else:
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.stop()
        proc.stop()
        return self._result(proc.name, proc.popen.returncode)

    def uac(
        self,
        scenario: str,
        port: int,
        proxy_port: int,
        keys: dict[str, str] | None = None,
        service: str = "+15552220000",
        timeout: float = 25.0,
        background: bool = False,
    ) -> Any:
        self.count += 1
        name = f"uac{self.count}"
        argv, _, _ = self._argv(name, scenario, port, keys or {}, ["-s", service])
        argv.append(f"{HOST}:{proxy_port}")
        if background:
            proc = Proc(name, argv, self.where / f"{name}.screen")
            self.running.append(proc)
            return proc
        with open(self.where / f"{name}.screen", "wb") as screen:
            try:
                done = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=screen, stderr=subprocess.STDOUT,
                    timeout=timeout, check=False,
                )  # fmt: skip
                code: int | None = done.returncode
            except subprocess.TimeoutExpired:
                code = None
        return self._result(name, code)

    def _result(self, name: str, code: int | None) -> SippRun:
        def read(suffix: str) -> str:
            path = self.where / f"{name}.{suffix}"
            return path.read_text(errors="replace") if path.exists() else ""

        return SippRun(name, code, read("logs"), read("messages"), read("screen"))

    def stop_all(self) -> None:
        for proc in self.running:
            proc.stop()


# ---------------------------------------------------------------------------- a lab


@dataclass
class Lab:
    """stird + Kamailio; UAS on ``uas_port`` (NEXT_HOP), UACs on the two source ports."""

    stird: Stird
    kamailio: Kamailio
    uas_port: int
    outbound_port: int  # INVITEs from here are signed
    inbound_port: int  # INVITEs from here are verified

    @property
    def sip_port(self) -> int:
        return self.kamailio.sip_port


def new_lab(
    where: Path,
    stird_config: str | None,
    defines: dict[str, str] | None = None,
    cfg: str = "kamailio.cfg",
) -> Lab:
    tools()  # before stird starts
    stird = new_stird(where / "stird", stird_config)
    base = free_ports(5)
    kam = Kamailio(
        where / "kamailio",
        sip_port=base,
        rpc_port=base + 1,
        stird=stird,
        next_hop_port=base + 2,
        outbound_port=base + 3,
        defines=defines or {},
        cfg=cfg,
    )
    try:
        kam.start()
    except BaseException:
        kam.stop()
        stird.stop()
        raise
    return Lab(stird, kam, base + 2, base + 3, base + 4)


def stop_lab(lab: Lab) -> None:
    lab.kamailio.stop()
    lab.stird.stop()
