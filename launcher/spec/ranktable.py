"""HCCL rank tables, version 1.0, for multi-node Ascend jobs.

A rank table lists every server (node) and its NPUs with the NPU NIC address
(`device_ip`) and a global `rank_id`; ranks run 0..N-1 server by server, devices
in ascending `device_id` order, all values are strings (MindSpore's
`rank_table_16pcs.json` format)::

    {"version": "1.0", "server_count": "2", "status": "completed",
     "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101",
                                  "rank_id": "0"}, ...]}, ...]}

Every source of a table goes through one *fragment* shape, one per server in
node-rank order: ``{"server_id": "<host IP>", "devices": [{"device_id": "0",
"device_ip": "..."}, ...]}`` (the device plugin's pod annotation has exactly
this shape, plus `pod_name` and `host_ip`). `build_table(fragments)` turns an
ordered list of fragments into the table; the same fragments in the same order
always give the same table, on every pod.

Three modes (`--rank-table`):

* FILE (an inventory YAML): `load_inventory` → `inventory_fragments` → the full
  table, rendered into the job's ConfigMap as `hccl.json`.
* ``dynamic``: at start-up every pod takes its fragment from the device-plugin
  annotation (`fragment_from_annotation`) or from `/etc/hccn.conf`
  (`fragment_from_hccn_conf`) and sends it to a small TCP rendezvous served by
  node rank 0 (`FragmentRendezvous`, `exchange_fragments`); the rendezvous
  answers every pod with all fragments ordered by node rank, and each pod calls
  `build_table` itself. Plain sockets: testable on localhost without a cluster.
* ``controller``: Huawei's hccl-controller fills the `rings-config-<job>`
  ConfigMap; `wait_for_controller_table` polls the mounted `hccl.json` until its
  status is `completed`, as Huawei's start scripts do.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import UsageError
from launcher.spec.names import dns1123_subdomain_problem
from launcher.util.userfile import check_json_depth, load_yaml, read_user_file

RANK_TABLE_VERSION = "1.0"
STATUS_COMPLETED = "completed"
STATUS_INITIALIZING = "initializing"
HOST_NIC_IP = "reserve"
DEVICES_PER_SERVER = (1, 2, 4, 8)
MAX_DEVICE_ID = 15  # 910B nodes number their NPUs 0..15 at most
HCCN_CONF = "/etc/hccn.conf"
MAX_SERVERS = 8192  # as --nodes
MAX_INVENTORY_BYTES = 16 * 2**20


class RankTableError(UsageError):
    """A rank table or one of its sources is malformed (exit code 2)."""


# ----------------------------------------------------------------------------- fragments

@dataclass(frozen=True)
class InventoryNode:
    """One server of a static inventory: Kubernetes node name, host IP, NPU NIC IPs."""

    name: str
    host_ip: str
    device_ips: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host_ip": self.host_ip, "device_ips": list(self.device_ips)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "node") -> InventoryNode:
        if not isinstance(data, dict):
            raise RankTableError(f"{where} must be a mapping with name, host_ip and device_ips")
        unknown = set(data) - {"name", "host_ip", "device_ips"}
        if unknown:
            raise RankTableError(f"{where}: unknown key {_short(sorted(map(str, unknown))[0])} "
                                 "(expected name, host_ip, device_ips)")
        for key in ("name", "host_ip", "device_ips"):
            if key not in data:
                raise RankTableError(f"{where}: missing {key!r}")
        name, host_ip, device_ips = data["name"], data["host_ip"], data["device_ips"]

        if not isinstance(name, str) or dns1123_subdomain_problem(name):
            raise RankTableError(f"{where}: name {_short(name)} is not a Kubernetes node name")
        _check_ip(host_ip, f"{where} ({name}) host_ip")
        if not isinstance(device_ips, list) or not device_ips:
            raise RankTableError(f"{where} ({name}): device_ips must be a non-empty list")
        for index, ip in enumerate(device_ips):
            _check_ip(ip, f"{where} ({name}) device_ips[{index}]")
        return cls(name=name, host_ip=str(host_ip), device_ips=tuple(str(ip) for ip in device_ips))

    def fragment(self) -> dict[str, Any]:
        return {
            "server_id": self.host_ip,
            "devices": [{"device_id": str(i), "device_ip": ip} for i, ip in enumerate(self.device_ips)],
        }


def load_inventory(path: str | Path) -> tuple[InventoryNode, ...]:
    """Read an inventory YAML: ``nodes: [{name, host_ip, device_ips: [8 IPs]}, ...]``."""
    import yaml

    try:
        text = read_user_file(path, MAX_INVENTORY_BYTES, "inventory")
    except UsageError as err:
        raise RankTableError(str(err)) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        # aliases could expand a few bytes into gigabytes (a "billion laughs"): none needed here
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=loader)):
            raise RankTableError(f"inventory {path} uses YAML aliases (*name): write every node out")
        data = load_yaml(text, f"inventory {path}")
    except UsageError as err:
        raise RankTableError(str(err)) from None
    except yaml.YAMLError as err:
        raise RankTableError(f"inventory {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise RankTableError(f"inventory {path} must have a non-empty 'nodes' list")
    if len(data["nodes"]) > MAX_SERVERS:
        raise RankTableError(f"inventory {path} lists {len(data['nodes'])} nodes; at most {MAX_SERVERS}")
    nodes = tuple(InventoryNode.from_dict(item, f"inventory {path} node {i}")
                  for i, item in enumerate(data["nodes"]))
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise RankTableError(f"inventory {path}: node {node.name!r} is listed twice")
        seen.add(node.name)
    build_table(inventory_fragments(nodes))  # every other rule of a rank table
    return nodes


def inventory_fragments(nodes: Iterable[InventoryNode]) -> list[dict[str, Any]]:
    return [node.fragment() for node in nodes]


def fragment_from_annotation(value: str | dict[str, Any], where: str = "annotation") -> dict[str, Any]:
    """The fragment in a device-plugin annotation value (JSON text or its parsed object).

    Accepts `ascend.kubectl.kubernetes.io/ascend-910-configuration`:
    ``{"pod_name", "server_id", "host_ip", "devices": [{"device_id", "device_ip"}]}``.
    """
    data: Any = value
    for _ in range(2):  # tolerate a JSON string holding the JSON object (kubectl jsonpath)
        if isinstance(data, str):
            try:
                check_json_depth(data, where)
                data = json.loads(data)
            except UsageError as err:
                raise RankTableError(str(err)) from None
            except json.JSONDecodeError as err:
                raise RankTableError(f"{where} is not valid JSON: {err.msg} at line {err.lineno}") from err
    if not isinstance(data, dict):
        raise RankTableError(f"{where} must be a JSON object with server_id and devices")
    server_id = data.get("server_id") or data.get("host_ip")
    if server_id is None:
        raise RankTableError(f"{where} has no server_id")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise RankTableError(f"{where} has no devices list")
    out = []
    for index, device in enumerate(devices):
        if not isinstance(device, dict) or "device_id" not in device or "device_ip" not in device:
            raise RankTableError(f"{where} devices[{index}] needs device_id and device_ip")
        out.append({"device_id": str(device["device_id"]), "device_ip": str(device["device_ip"])})
    fragment = {"server_id": str(server_id), "devices": out}
    check_fragment(fragment, where)
    return fragment


def fragment_from_hccn_conf(text: str, server_id: str, device_ids: Sequence[int] | None = None,
                            where: str = HCCN_CONF) -> dict[str, Any]:
    """The fragment from a host's `/etc/hccn.conf` (`address_<i>=<NPU NIC IP>` lines).

    `device_ids` are the NPUs given to this pod (e.g. from ASCEND_VISIBLE_DEVICES);
    None takes every device listed in the file.
    """
    addresses: dict[int, str] = {}
    for raw in text.splitlines():
        key, sep, value = raw.strip().partition("=")
        if sep and key.startswith("address_") and key[len("address_"):].isdigit():
            addresses[int(key[len("address_"):])] = value.strip()
    if not addresses:
        raise RankTableError(f"{where} lists no address_<i>= lines")
    wanted = sorted(addresses) if device_ids is None else sorted(int(d) for d in device_ids)
    missing = [d for d in wanted if d not in addresses]
    if missing:
        raise RankTableError(f"{where} has no address for device {missing[0]}")
    fragment = {"server_id": str(server_id),
                "devices": [{"device_id": str(d), "device_ip": addresses[d]} for d in wanted]}
    check_fragment(fragment, where)
    return fragment


def parse_visible_devices(value: str) -> list[int]:
    """Device ids from `ASCEND_VISIBLE_DEVICES` / the `huawei.com/Ascend910` annotation.

    Accepts "0,1,2,3", "0-3" and "Ascend910-0,Ascend910-1".
    """
    ids: list[int] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        part = part.rsplit("-", 1)[-1] if not part[0].isdigit() else part
        low, sep, high = part.partition("-")
        try:
            ids.extend(range(int(low), int(high) + 1) if sep else [int(low)])
        except ValueError as err:
            raise RankTableError(f"cannot read device ids from {_short(value)}") from err
    return ids


# ----------------------------------------------------------------------------- the table

def build_table(fragments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The version-1.0 rank table of `fragments`, given in node-rank order."""
    if not fragments:
        raise RankTableError("a rank table needs at least one server")
    for index, fragment in enumerate(fragments):
        check_fragment(fragment, f"server {index}")
    servers = []
    rank = 0
    for fragment in fragments:
        devices = sorted(fragment["devices"], key=lambda d: int(d["device_id"]))
        entries = []
        for device in devices:
            entries.append({"device_id": str(int(device["device_id"])),
                            "device_ip": str(device["device_ip"]),
                            "rank_id": str(rank)})
            rank += 1
        servers.append({"server_id": str(fragment["server_id"]), "host_nic_ip": HOST_NIC_IP,
                        "device": entries})
    table = {"version": RANK_TABLE_VERSION, "server_count": str(len(servers)),
             "status": STATUS_COMPLETED, "server_list": servers}
    validate_table(table)
    return table


def validate_table(table: Any, *, servers: int | None = None,
                   devices_per_server: int | None = None) -> dict[str, Any]:
    """Check a version-1.0 table (ours or the hccl-controller's); return it unchanged.

    Extra keys (the controller adds some) are allowed; everything the 1.0 format
    requires must be present, as strings, with ranks contiguous server by server.
    """
    if not isinstance(table, dict):
        raise RankTableError("rank table must be a JSON object")
    if table.get("version") != RANK_TABLE_VERSION:
        raise RankTableError(f"rank table version must be {RANK_TABLE_VERSION!r}, "
                             f"not {_short(table.get('version'))}")
    if table.get("status") != STATUS_COMPLETED:
        raise RankTableError(f"rank table status is {_short(table.get('status'))}, not 'completed'")
    server_list = table.get("server_list")
    if not isinstance(server_list, list) or not server_list:
        raise RankTableError("rank table has no server_list")
    count = table.get("server_count")
    if not isinstance(count, str) or count != str(len(server_list)):
        raise RankTableError(f"server_count {_short(count)} does not match the {len(server_list)} "
                             "servers listed (it must be a string)")
    if servers is not None and len(server_list) != servers:
        raise RankTableError(f"rank table lists {len(server_list)} servers, the job has {servers}")
    expected_rank = 0
    seen_servers: set[Any] = set()
    seen_ips: set[Any] = set()
    per_server: int | None = None
    for index, server in enumerate(server_list):
        if not isinstance(server, dict):
            raise RankTableError(f"server {index} must be an object")
        server_id = server.get("server_id")
        where = f"server {index} ({server_id})"
        _check_ip(server_id, f"server {index} server_id")
        if _ip(server_id) in seen_servers:  # fe80::1 and fe80:0::1 are one address
            raise RankTableError(f"{where}: server_id appears twice")
        seen_servers.add(_ip(server_id))
        devices = server.get("device")
        if not isinstance(devices, list):
            raise RankTableError(f"{where}: 'device' must be a list")
        if len(devices) not in DEVICES_PER_SERVER:
            raise RankTableError(f"{where}: {len(devices)} devices; a server has 1, 2, 4 or 8")
        if per_server is None:
            per_server = len(devices)
        elif len(devices) != per_server:
            raise RankTableError(f"{where}: {len(devices)} devices, server 0 has {per_server}; "
                                 "every server must use the same number")
        seen_ids: set[int] = set()
        for device in devices:
            if not isinstance(device, dict):
                raise RankTableError(f"{where}: every device must be an object")
            for key in ("device_id", "device_ip", "rank_id"):
                if not isinstance(device.get(key), str):
                    raise RankTableError(f"{where}: device {key} must be a string, "
                                         f"got {_short(device.get(key))}")
            device_id = _device_id(device["device_id"], where)
            if device_id in seen_ids:
                raise RankTableError(f"{where}: duplicate device_id {device_id}")
            seen_ids.add(device_id)
            _check_ip(device["device_ip"], f"{where} device {device_id} device_ip")
            if _ip(device["device_ip"]) in seen_ips:
                raise RankTableError(f"{where}: device_ip {device['device_ip']} is used twice")
            seen_ips.add(_ip(device["device_ip"]))
            if device["rank_id"] != str(expected_rank):
                raise RankTableError(f"{where}: rank_id {device['rank_id']!r} where {expected_rank} "
                                     "was expected (ranks run 0..N-1 server by server)")
            expected_rank += 1
    if devices_per_server is not None and per_server != devices_per_server:
        raise RankTableError(f"rank table has {per_server} devices per server, the job uses "
                             f"{devices_per_server}")
    return table


def server_index(table: dict[str, Any], server_id: str) -> int:
    """The position (= node rank) of `server_id` in the table."""
    for index, server in enumerate(table["server_list"]):
        if server["server_id"] == server_id:
            return index
    raise RankTableError(f"server {server_id} is not in the rank table")


def dumps(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=2) + "\n"


def _device_id(value: Any, where: str) -> int:
    text = str(value)
    if not text.isdigit() or int(text) > MAX_DEVICE_ID:
        raise RankTableError(f"{where}: device_id {_short(value)} is not a number 0..{MAX_DEVICE_ID}")
    return int(text)


def _ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def _short(value: Any) -> str:
    """repr of a value from a file, cut short: an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_ip(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise RankTableError(f"{where} must be an IP address string, got {_short(value)}")
    try:
        ipaddress.ip_address(value)
    except ValueError as err:
        raise RankTableError(f"{where} {_short(value)} is not a well-formed IP address") from err


def check_fragment(fragment: Any, where: str) -> None:
    if not isinstance(fragment, dict) or not isinstance(fragment.get("devices"), list):
        raise RankTableError(f"{where} must be an object with server_id and devices")
    _check_ip(fragment.get("server_id"), f"{where} server_id")
    devices = fragment["devices"]
    if len(devices) not in DEVICES_PER_SERVER:
        raise RankTableError(f"{where} ({fragment['server_id']}): {len(devices)} devices; "
                             "a server has 1, 2, 4 or 8")
    ids = [_device_id(d.get("device_id") if isinstance(d, dict) else None, where) for d in devices]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate is not None:
        raise RankTableError(f"{where} ({fragment['server_id']}): duplicate device_id {duplicate}")
    for device in devices:
        _check_ip(device.get("device_ip"), f"{where} device {device.get('device_id')} device_ip")
