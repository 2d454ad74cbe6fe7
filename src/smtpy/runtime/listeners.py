"""The listening sockets of `smtpy serve`, bound before any process serves on them.

Binding apart from serving lets several processes share one socket: the
supervisor binds once, forks, and every process accepts on the same sockets,
so the kernel spreads connections over them and a restarted process takes
over at once. An address that cannot be bound is a configuration error with
the reason and what to do.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence

from smtpy.errors import ConfigError

BACKLOG = 1024


def bind(listen: Sequence[tuple[str, int]]) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets for every `(host, port)` (all addresses of a name)."""
    sockets: list[socket.socket] = []
    try:
        for host, port in listen:
            sockets.extend(_bind_one(host, port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(host: str, port: int) -> list[socket.socket]:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    bound: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # [::]:25 is IPv6 only; list 0.0.0.0:25 too for IPv4, as the settings say.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except PermissionError:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: permission denied; run under systemd with "
                    "CAP_NET_BIND_SERVICE, as root, or set SMTPY_LISTEN to a port above 1023"
                ) from None
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                ) from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound
