"""Listening-socket settings shared by every stird listener."""

from __future__ import annotations

import socket

#: Accept-queue length of every listener (the kernel caps it at ``net.core.somaxconn``,
#: 4096 on Debian 12). Asterisk opens a new connection for each ``AGI()`` call, so at
#: 200 sessions/s the default of 100 (asyncio) or 128 (aiohttp) fills during a 0.5 s
#: hiccup; the kernel then drops the SYNs, and each dropped caller waits out a 1 s, 3 s, …
#: SYN retransmission: seconds of post-dial delay and AGI timeouts from a sub-second
#: pause (found by bench/soak.py --redis: TcpExtListenOverflows).
LISTEN_BACKLOG = 1024


def _bound(
    host: str, port: int, *, reuseport: bool, address: tuple[object, ...] | None = None
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address or (host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def listen(host: str, port: int) -> socket.socket:
    """A non-blocking TCP listening socket on ``host``:``port`` (IPv6 if ``host`` has ':')."""
    sock = _bound(host, port, reuseport=False)
    try:
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def reuseport(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound with ``SO_REUSEPORT`` on ``host``:``port`` and not
    listening yet: one of a group of sockets on one address, each listening in its own
    process, among which the kernel hashes new connections (Linux; the processes must
    share the effective UID). Bound but never listening, it only holds the port (port 0
    picks one): the kernel's group is made of listening sockets, so it takes no
    connection away from them (checked on Linux 6.x: 64 connections, 33 + 31 accepted by
    two listeners, none lost to the third, bound-only socket)."""
    return _bound(host, port, reuseport=True)


def reuseport_twin(sock: socket.socket) -> socket.socket:
    """Another :func:`reuseport` socket on ``sock``'s very address (its port, and an IPv6
    scope), in the same ``SO_REUSEPORT`` group."""
    address = sock.getsockname()
    return _bound(str(address[0]), int(address[1]), reuseport=True, address=address)
