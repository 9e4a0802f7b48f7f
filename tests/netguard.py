"""The test run's network guard: no test reaches an address outside 127.0.0.0/8 and ::1.

Installed for the whole pytest process by tests/conftest.py (before collection). It wraps
``socket.socket.connect``/``connect_ex``/``sendto`` (every TCP/UDP client in this process, asyncio's
included: ``socket.create_connection`` and asyncio's connect go through them) and the module-level
name lookups (``getaddrinfo``, ``gethostbyname(_ex)``: resolving a name that is not local is DNS
traffic). A refused destination raises ``NetworkGuardError`` (a ``ConnectionRefusedError``; for a
lookup a ``socket.gaierror``) and is recorded, and the test during which it happened fails at its
teardown even when the code under test swallowed the error. AF_UNIX and other non-IP sockets pass.

Subprocesses (daphne, rqworker, Chromium) are not guarded by this: they are started by the tests
on 127.0.0.1 and talk to the local Redis/PostgreSQL only.

``blocked_attempts()`` lets a test check that code tries a given outside address without sending
anything there: inside it, refused destinations are recorded in the list it yields instead of
counting as violations.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import threading

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkGuardError(ConnectionRefusedError):
    """A test tried to reach an address outside the loopback networks."""


class NetworkGuardLookupError(socket.gaierror):
    """A test tried to resolve a name that is not local (DNS traffic)."""


_lock = threading.Lock()
_violations: list[str] = []
_expected: list[list] = []  # stack of lists collecting attempts inside blocked_attempts()
_originals: dict = {}


def _local_host(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, ...): the local/passive address
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    h = str(host).strip().strip("[]").split("%", 1)[0].rstrip(".").lower()
    if h in ("", "0.0.0.0", "::") or h in LOCAL_NAMES or h.endswith(".localhost"):
        return True  # "", INADDR_ANY and ::: the kernel connects them to this host
    if _originals and h == _originals["hostname"].lower():
        return True  # the machine's own name (/etc/hosts)
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        return False  # a name that needs DNS
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _refuse(what: str, destination) -> None:
    with _lock:
        if _expected:
            _expected[-1].append(destination)
        else:
            _violations.append(f"{what} {destination!r}")


def _is_ip_socket(sock) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def _connect(self, address):
    if _is_ip_socket(self) and not _local_host(address[0]):
        _refuse("connect", tuple(address[:2]))
        raise NetworkGuardError(errno.ECONNREFUSED, f"network guard: {address[0]!r} is outside 127.0.0.0/8 and ::1")
    return _originals["connect"](self, address)


def _connect_ex(self, address):
    if _is_ip_socket(self) and not _local_host(address[0]):
        _refuse("connect_ex", tuple(address[:2]))
        return errno.ECONNREFUSED
    return _originals["connect_ex"](self, address)


def _sendto(self, data, *args):
    address = args[-1]
    if _is_ip_socket(self) and isinstance(address, tuple) and not _local_host(address[0]):
        _refuse("sendto", tuple(address[:2]))
        raise NetworkGuardError(errno.ECONNREFUSED, f"network guard: {address[0]!r} is outside 127.0.0.0/8 and ::1")
    return _originals["sendto"](self, data, *args)


def _numeric(host) -> bool:
    try:
        h = host.decode() if isinstance(host, (bytes, bytearray)) else str(host)
        ipaddress.ip_address(h.strip("[]").split("%", 1)[0])
        return True
    except (ValueError, UnicodeDecodeError):
        return False


def _getaddrinfo(host, *args, **kwargs):
    # a numeric address resolves as itself (no traffic; connect() judges it)
    if not _local_host(host) and not _numeric(host):
        _refuse("getaddrinfo", host)
        raise NetworkGuardLookupError(socket.EAI_NONAME, f"network guard: no DNS lookup of {host!r} in tests")
    return _originals["getaddrinfo"](host, *args, **kwargs)


def _lookup(name):
    def wrapper(host, *args, **kwargs):
        if not _local_host(host) and not _numeric(host):
            _refuse(name, host)
            raise NetworkGuardLookupError(socket.EAI_NONAME, f"network guard: no DNS lookup of {host!r} in tests")
        return _originals[name](host, *args, **kwargs)
    return wrapper


def install() -> None:
    if _originals:
        return
    _originals.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                      sendto=socket.socket.sendto, getaddrinfo=socket.getaddrinfo,
                      gethostbyname=socket.gethostbyname, gethostbyname_ex=socket.gethostbyname_ex,
                      hostname=socket.gethostname())
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
    socket.socket.sendto = _sendto
    socket.getaddrinfo = _getaddrinfo
    socket.gethostbyname = _lookup("gethostbyname")
    socket.gethostbyname_ex = _lookup("gethostbyname_ex")


def installed() -> bool:
    return socket.socket.connect is _connect and socket.getaddrinfo is _getaddrinfo


def take_violations() -> list[str]:
    with _lock:
        out = list(_violations)
        _violations.clear()
    return out


@contextlib.contextmanager
def blocked_attempts():
    """Yields a list of the outside destinations tried inside the block (each was refused, none
    counts as a violation)."""
    attempts: list = []
    with _lock:
        _expected.append(attempts)
    try:
        yield attempts
    finally:
        with _lock:
            _expected.remove(attempts)
