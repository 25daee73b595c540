"""The test network guard: in a process where `install()` ran, traffic may only go to
loopback, Unix sockets and the test network namespaces' range (tests/netns.py builds its
namespaces from TEST_NETWORK). Anything else raises before a packet leaves:

- `connect`, `connect_ex`, `sendto`, `sendmsg` to another address: PermissionError;
- resolving a name that is neither `localhost` nor in /etc/hosts (which is how the test
  namespaces name their hosts): socket.gaierror, so the resolver is never asked (a DNS
  query would leave the machine), and callers see what they would see without DNS.

Every refusal is also written to stderr: libraries (urllib3, botocore) often wrap the
error into one that drops its text. This module imports only the standard library: it runs
at the start of every Python process the tests start (sitecustomize.py beside it).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys

TEST_NETWORK = ipaddress.ip_network("10.231.0.0/16")  # tests/netns.py: one /24 per Network
OPT_OUT = "LEO_TEST_NETGUARD"  # "off": not installed (only for the image build's `pip download`)
HOSTS_FILE = "/etc/hosts"
_WHAT = "only loopback and test namespaces"
_MARK = "__leo_netguard__"

_real = {name: getattr(socket, name) for name in
         ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")}
_real_socket = {name: getattr(socket.socket, name) for name in
                ("connect", "connect_ex", "sendto", "sendmsg")}


def allowed_ip(text: str) -> bool:
    """Loopback, the unspecified address (this host) or the test namespaces' range."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or ip in TEST_NETWORK


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _hosts_names() -> set[str]:
    try:
        with open(HOSTS_FILE, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return set()
    names = set()
    for line in lines:
        names.update(name.lower() for name in line.split("#", 1)[0].split()[1:])
    return names


def _report(message: str) -> None:
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr, or it is closed
        pass


def _check_name(host: object) -> None:
    """Refuse to resolve a name that only a DNS server could answer."""
    if host is None:
        return
    name = host.decode() if isinstance(host, bytes | bytearray) else str(host)
    if name == "" or _is_ip(name):
        return
    name = name.rstrip(".").lower()
    if name == "localhost" or name in _hosts_names():
        return
    _refuse_resolution(f"name resolution of {name!r}")


def _refuse_resolution(what: str) -> None:
    message = f"test network guard: {what} refused (not in {HOSTS_FILE}; {_WHAT})"
    _report(message)
    raise socket.gaierror(socket.EAI_NONAME, message)


def _check_address(sock: socket.socket, address: object) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return  # Unix, netlink, … (or a malformed address the socket itself rejects)
    if not address:
        return
    host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
    port = address[1] if len(address) > 1 else "?"
    if _is_ip(host) or host == "":
        ips = [host or "0.0.0.0"]
    else:  # the socket would resolve it itself (in C, past socket.getaddrinfo)
        _check_name(host)
        ips = [info[4][0] for info in _real["getaddrinfo"](host, None, sock.family)]
    for ip in ips:
        if not allowed_ip(ip):
            message = f"test network guard: connection to {host}:{port} refused ({_WHAT})"
            if ip != host:
                message = message.replace(f"{host}:{port}", f"{host}:{port} ({ip})", 1)
            _report(message)
            raise PermissionError(errno.EACCES, message)


def _marked(function):
    setattr(function, _MARK, True)
    return function


def installed() -> bool:
    return getattr(socket.socket.connect, _MARK, False)


def install() -> None:
    """Guard this process (idempotent)."""
    if installed():
        return

    @_marked
    def connect(self, address):
        _check_address(self, address)
        return _real_socket["connect"](self, address)

    @_marked
    def connect_ex(self, address):
        _check_address(self, address)
        return _real_socket["connect_ex"](self, address)

    @_marked
    def sendto(self, data, *args):
        if args:  # sendto(data, address) or sendto(data, flags, address)
            _check_address(self, args[-1])
        return _real_socket["sendto"](self, data, *args)

    @_marked
    def sendmsg(self, buffers, *args):
        if len(args) >= 3:  # sendmsg(buffers, ancdata, flags, address)
            _check_address(self, args[2])
        return _real_socket["sendmsg"](self, buffers, *args)

    @_marked
    def getaddrinfo(host, *args, **kwargs):
        _check_name(host)
        return _real["getaddrinfo"](host, *args, **kwargs)

    @_marked
    def gethostbyname(host):
        _check_name(host)
        return _real["gethostbyname"](host)

    @_marked
    def gethostbyname_ex(host):
        _check_name(host)
        return _real["gethostbyname_ex"](host)

    @_marked
    def gethostbyaddr(host):
        if _is_ip(str(host)) and not allowed_ip(str(host)):  # its PTR query would go to DNS
            _refuse_resolution(f"reverse lookup of {host}")
        _check_name(host)
        return _real["gethostbyaddr"](host)

    for name, function in (("connect", connect), ("connect_ex", connect_ex),
                           ("sendto", sendto), ("sendmsg", sendmsg)):
        setattr(socket.socket, name, function)
    for name, function in (("getaddrinfo", getaddrinfo), ("gethostbyname", gethostbyname),
                           ("gethostbyname_ex", gethostbyname_ex),
                           ("gethostbyaddr", gethostbyaddr)):
        setattr(socket, name, function)
