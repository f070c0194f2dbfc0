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


#: Where the supervisor's reserved UDP socket is connected (the discard port: only root can
#: send from it), which takes it out of the kernel's choice among the group's sockets.
_NOWHERE = 9


def _bound(
    host: str,
    port: int,
    *,
    reuseport: bool,
    address: tuple[object, ...] | None = None,
    kind: socket.SocketKind = socket.SOCK_STREAM,
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
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


def udp_reserved(host: str, port: int) -> socket.socket:
    """A UDP socket bound with ``SO_REUSEPORT`` on ``host``:``port`` (port 0 picks one)
    that holds the port for a group of :func:`udp_twin` sockets and receives nothing.

    Unlike TCP, every bound UDP socket of a reuseport group gets its share of the
    datagrams; a *connected* one does not (Linux skips it in the group's choice and
    matches it only against its peer's address), so the reservation is connected to the
    discard port of its own host. Checked on Linux 6.x: 200 datagrams from 200 source
    ports, none to the reservation, all to the two unconnected sockets beside it."""
    sock = _bound(host, port, reuseport=True, kind=socket.SOCK_DGRAM)
    address = sock.getsockname()
    peer = str(address[0])
    if peer in ("0.0.0.0", "::"):  # noqa: S104 - the wildcard's own host
        peer = "::1" if sock.family == socket.AF_INET6 else "127.0.0.1"
    try:
        sock.connect((peer, _NOWHERE, *address[2:]))
    except OSError:
        sock.close()
        raise
    return sock


def udp_twin(sock: socket.socket) -> socket.socket:
    """An unconnected UDP socket on ``sock``'s address, in its ``SO_REUSEPORT`` group: the
    kernel hashes each datagram's source over the group's unconnected sockets."""
    address = sock.getsockname()
    return _bound(
        str(address[0]), int(address[1]), reuseport=True, address=address, kind=socket.SOCK_DGRAM
    )
