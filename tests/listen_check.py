"""How many connections a listener's accept queue holds while its owner is not accepting."""

from __future__ import annotations

import select
import socket

#: Asterisk opens one connection per AGI() call: 200 sessions/s for 1.25 s of pause.
BURST = 250


def queued_connections(port: int, count: int = BURST, wait: float = 1.0) -> int:
    """Open ``count`` connections to ``port`` at once, without yielding to the event loop
    that owns it (so nothing is accepted), and count the handshakes the kernel completes:
    the rest sit in SYN-SENT because the accept queue is full. Call it synchronously from
    the test coroutine."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        pending, done = set(socks), 0
        while pending:
            _, writable, _ = select.select([], list(pending), [], wait)
            if not writable:
                break
            for sock in writable:
                pending.discard(sock)
                done += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        return done
    finally:
        for sock in socks:
            sock.close()
