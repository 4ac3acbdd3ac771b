"""Why the server cannot listen on an address, said so that the user knows what to change.

gRPC reports any bind failure as "Failed to bind ... set GRPC_VERBOSITY=debug"; binding a
plain socket to the same address tells the usual causes apart (a port in use, an address
that is not this machine's, a privileged port).
"""

from __future__ import annotations

import errno
import socket

_HINT = "choose another address with --addr HOST:PORT (make run ADDR=HOST:PORT)"


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ValueError when it is neither."""
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def bind_problem(addr: str) -> str | None:
    """Why ``addr`` cannot be listened on, or None when a socket binds there (with
    SO_REUSEADDR, as gRPC binds, so a port in TIME_WAIT counts as free)."""
    try:
        host, port = split_addr(addr)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except ValueError as exc:
        return str(exc)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror})"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is already in use (is another backend still running?)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "the address is not one of this machine's"
            if exc.errno == errno.EACCES:
                return "permission denied (ports below 1024 need privileges)"
            return exc.strerror or str(exc)
    return None


def cannot_listen_message(addr: str, problem: str | None = None) -> str:
    """One line: the address, why it cannot be used, and the fix."""
    why = problem or bind_problem(addr) or "gRPC could not bind it"
    return f"cannot listen on {addr}: {why}; {_HINT}"
