"""Several "hosts" on one machine: Linux network namespaces joined by a bridge.

    with Network(nodes=2, hosts={"leo-mn-0.leo-mn.default.svc": 0}) as net:
        net.address(0)                      # "10.231.17.1": node 0's eth0
        net.gateway                         # "10.231.17.254": the bridge, in the root namespace
        net.command(0, ["python", "-c", "..."])   # argv running in node 0's namespace
        net.cut(1)                          # node 1's cable pulled (host end of its veth down)

Each node is a namespace `leo-mn<tag>-<i>` with `lo` up and an `eth0` (a veth whose other
end is on the bridge `lbr<tag>`). The bridge holds the gateway address, so a server in the
root namespace (e.g. the S3 server) that binds to it is reachable from every node, and the
test process reaches every node. Addresses come from 10.231.X.0/24, X chosen so that no
interface of this machine already uses it (10.231.0.0/16 is TEST_NETWORK, the one range
besides loopback that the test network guard, tests/netguard, lets traffic go to); nothing is routed anywhere else (the nodes have
no default route).

`ip netns exec NS` bind-mounts every file of /etc/netns/NS/ over /etc/ for the command:
`hosts` gives each node the names a headless Service would give its pod (e.g.
`<job>-0.<job>.default.svc`). A command can also get a hostname of its own (a new UTS
namespace, as a pod has) and a private directory mounted over a path (e.g. /tmp/leo-launch,
which is private to each pod's container).

Everything is removed on `close()` (also used by `__exit__`); namespaces, links and
/etc/netns entries left by a crashed earlier run (their tag names a dead process) are
removed when a new Network is created. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and
the Debian packages iproute2 (`ip`), util-linux (`unshare`), mount and hostname;
`unavailable()` says why not, for a pytest skip.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.util.procs import pid_alive
from tests.netguard import TEST_NETWORK

PREFIX = "leo-mn"  # namespaces: leo-mn<tag>-<i>
BRIDGE_PREFIX = "lbr"  # bridge: lbr<tag>
VETH_PREFIX = "lvh"  # host ends: lvh<tag>-<i>
NETNS_ETC = Path("/etc/netns")
_TAG = re.compile(r"^(?:leo-mn|lbr|lvh)(\d+)(?:-\d+)?$")


def unavailable() -> str | None:
    """Why namespaces cannot be created here (None when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (the test runs as root in CI)"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("mount", "mount"),
                          ("hostname", "hostname")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    probe, bridge = f"{PREFIX}probe{os.getpid()}", f"{BRIDGE_PREFIX}{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("link", "add", bridge, "type", "bridge")
    except RuntimeError as err:
        return f"cannot create a network namespace and a bridge: {err}"
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
    return None


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def clean_stale() -> list[str]:
    """Remove namespaces, links and /etc/netns entries of earlier runs whose process is gone."""
    removed = []
    namespaces = [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]
    links = re.findall(r"^\d+: ([^:@]+)[:@]", _ip("-o", "link", "show"), flags=re.M)
    etc = [p.name for p in NETNS_ETC.iterdir()] if NETNS_ETC.is_dir() else []
    for kind, names in (("netns", namespaces), ("link", links), ("etc", etc)):
        for name in names:
            match = _TAG.match(name)
            if not match or pid_alive(int(match.group(1))):
                continue
            if kind == "netns":
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            elif kind == "link":
                subprocess.run(["ip", "link", "delete", name], capture_output=True)
            else:
                shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
            removed.append(name)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    used = [ipaddress.ip_interface(a).network
            for a in re.findall(r"inet (\S+)", _ip("-4", "-o", "addr", "show"))]
    subnets = list(TEST_NETWORK.subnets(new_prefix=24))  # X.0/24 for X in 1..250 below
    start = os.getpid() % 250
    for offset in range(250):
        net = subnets[(start + offset) % 250 + 1]
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /24 in {TEST_NETWORK}")


class Network:
    """`nodes` namespaces on one bridge (see the module docstring)."""

    def __init__(self, nodes: int, hosts: Mapping[str, int] | None = None) -> None:
        self.nodes = nodes
        self.tag = str(os.getpid())
        self.bridge = f"{BRIDGE_PREFIX}{self.tag}"
        self.namespaces = [f"{PREFIX}{self.tag}-{i}" for i in range(nodes)]
        self.host_ends = [f"{VETH_PREFIX}{self.tag}-{i}" for i in range(nodes)]
        for name in [self.bridge, *self.host_ends]:
            assert len(name) <= 15, name  # IFNAMSIZ
        clean_stale()
        self.subnet = _free_subnet()
        hosts_list = list(self.subnet.hosts())
        self.addresses = [str(hosts_list[i]) for i in range(nodes)]
        self.gateway = str(hosts_list[-1])
        self._created: list[tuple[str, str]] = []
        try:
            self._build(dict(hosts or {}))
        except BaseException:
            self.close()
            raise

    def _build(self, hosts: dict[str, int]) -> None:
        prefix = self.subnet.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        self._created.append(("link", self.bridge))
        _ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        for name, node in hosts.items():
            lines.append(f"{self.addresses[node]} {name}")
        for i, (ns, host_end) in enumerate(zip(self.namespaces, self.host_ends, strict=True)):
            _ip("netns", "add", ns)
            self._created.append(("netns", ns))
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            self._created.append(("etc", str(etc)))
            (etc / "hosts").write_text("\n".join(lines) + "\n")
            _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._created.append(("link", host_end))
            _ip("link", "set", host_end, "master", self.bridge)
            _ip("link", "set", host_end, "up")
            _ip("link", "set", "lo", "up", netns=ns)
            _ip("addr", "add", f"{self.addresses[i]}/{prefix}", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)

    # -------------------------------------------------------------- use
    def address(self, node: int) -> str:
        return self.addresses[node]

    def command(self, node: int, argv: Sequence[str], *, hostname: str | None = None,
                private_dirs: Mapping[str, str | Path] | None = None) -> list[str]:
        """argv run in node `node`'s namespace; optionally with its own hostname and with
        directories bind-mounted over paths (in a mount namespace of its own, which
        `ip netns exec` creates anyway)."""
        cmd = ["ip", "netns", "exec", self.namespaces[node]]
        if not hostname and not private_dirs:
            return [*cmd, *argv]
        script = []
        for target, source in (private_dirs or {}).items():
            if not Path(target).exists():
                self._created.append(("mountpoint", str(target)))
            script.append(f"mkdir -p {_sh(str(target))} && mount --bind {_sh(str(source))} {_sh(str(target))}")
        if hostname:
            script.append(f"hostname {_sh(hostname)}")
        script.append('exec "$@"')
        return [*cmd, "unshare", "--uts", "--mount", "--propagation", "private", "--",
                "sh", "-c", " && ".join(script), "sh", *argv]

    def cut(self, node: int) -> None:
        """Pull node `node`'s cable: the bridge end of its veth goes down."""
        _ip("link", "set", self.host_ends[node], "down")

    def reconnect(self, node: int) -> None:
        _ip("link", "set", self.host_ends[node], "up")

    def close(self) -> None:
        for kind, name in reversed(self._created):
            if kind == "netns":
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            elif kind == "link":
                subprocess.run(["ip", "link", "delete", name], capture_output=True)
            elif kind == "mountpoint":  # made by `mkdir -p` for a private mount: empty here
                try:
                    os.rmdir(name)
                except OSError:
                    pass
            else:
                shutil.rmtree(name, ignore_errors=True)
        self._created.clear()
        try:
            NETNS_ETC.rmdir()  # only when empty: other users' entries stay
        except OSError:
            pass

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sh(text: str) -> str:
    import shlex

    return shlex.quote(text)
