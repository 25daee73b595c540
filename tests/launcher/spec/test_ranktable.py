"""HCCL rank tables (version 1.0): building, validating, the three modes and the CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from launcher.pod import rendezvous as rdv
from launcher.spec import ranktable as rt
from tests.launcher.render_helpers import (
    annotation,
    device_ips,
    host_ip,
    run_cli,
    write_annotations,
    write_inventory,
)


def _expected_table(nodes: int, devices: int = 8) -> dict:
    servers = []
    for node in range(nodes):
        ips = device_ips(node, devices)
        servers.append({
            "server_id": host_ip(node),
            "host_nic_ip": "reserve",
            "device": [{"device_id": str(d), "device_ip": ips[d], "rank_id": str(node * devices + d)}
                       for d in range(devices)],
        })
    return {"version": "1.0", "server_count": str(nodes), "status": "completed", "server_list": servers}


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_annotations_of_simulated_nodes_give_the_documented_table(tmp_path, capsys, nodes):
    paths = write_annotations(tmp_path, nodes)
    code, out, err = run_cli(capsys, ["ranktable", "--annotations", *paths])
    assert (code, err) == (0, "")
    table = json.loads(out)
    assert table == _expected_table(nodes)
    # every value is a string and ranks run 0..N-1 server by server
    ranks = [d["rank_id"] for s in table["server_list"] for d in s["device"]]
    assert ranks == [str(r) for r in range(8 * nodes)]
    assert all(isinstance(v, str) for s in table["server_list"] for d in s["device"] for v in d.values())


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_inventory_gives_the_same_table_as_annotations(tmp_path, capsys, nodes):
    inventory = write_inventory(tmp_path / "nodes.yaml", nodes)
    code, out, err = run_cli(capsys, ["ranktable", "--inventory", str(inventory), "--version", "1.0"])
    assert (code, err) == (0, "")
    assert json.loads(out) == _expected_table(nodes)


def test_devices_are_ordered_by_id_and_ranked_contiguously():
    first = annotation(0, 4, first_device=4)  # a 4-card pod on NPUs 4..7
    first["devices"].reverse()
    table = rt.build_table([first, annotation(1, 4)])
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["4", "5", "6", "7"]
    assert [d["rank_id"] for s in table["server_list"] for d in s["device"]] == [str(i) for i in range(8)]


def test_annotation_text_and_double_encoded_json_are_accepted():
    value = annotation(3, 2)
    assert rt.fragment_from_annotation(json.dumps(value)) == rt.fragment_from_annotation(value)
    assert rt.fragment_from_annotation(json.dumps(json.dumps(value)))["server_id"] == host_ip(3)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t["server_list"][0]["device"][1].update(device_id="0"), "duplicate device_id 0"),
        (lambda t: t["server_list"][1]["device"][0].update(rank_id="9"), "rank_id '9' where 8"),
        (lambda t: t["server_list"][0]["device"][0].update(device_ip="192.168.1"), "not a well-formed IP"),
        (lambda t: t["server_list"][0].update(server_id="node-a"), "not a well-formed IP"),
        (lambda t: t["server_list"][1].update(device=t["server_list"][1]["device"][:3]), "3 devices"),
        (lambda t: t.update(server_count=2), "server_count"),
        (lambda t: t.update(version="1.2"), "version must be '1.0'"),
        (lambda t: t.update(status="initializing"), "status is 'initializing'"),
        (lambda t: t["server_list"][0]["device"][2].update(rank_id=2), "must be a string"),
        (lambda t: t["server_list"][1]["device"][0].update(
            device_ip=t["server_list"][0]["device"][0]["device_ip"]), "used twice"),
        (lambda t: t["server_list"][1].update(server_id=t["server_list"][0]["server_id"]), "appears twice"),
    ],
)
def test_validation_rejects_broken_tables(mutate, message):
    table = _expected_table(2)
    mutate(table)
    with pytest.raises(rt.RankTableError, match=message):
        rt.validate_table(table)


def test_servers_must_use_the_same_number_of_devices():
    with pytest.raises(rt.RankTableError, match="same number"):
        rt.build_table([annotation(0, 8), annotation(1, 4)])


def test_controller_tables_may_carry_extra_keys_and_are_checked_against_the_job():
    table = _expected_table(2)
    table["server_list"][0]["container_ip"] = "172.16.0.5"
    assert rt.validate_table(table, servers=2, devices_per_server=8) is table
    with pytest.raises(rt.RankTableError, match="the job has 4"):
        rt.validate_table(table, servers=4)
    with pytest.raises(rt.RankTableError, match="uses 4"):
        rt.validate_table(table, devices_per_server=4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"devices": []}', "no server_id"),
        ('{"server_id": "10.0.0.1"}', "no devices"),
        ('{"server_id": "10.0.0.1", "devices": [{"device_id": "0"}]}', "needs device_id and device_ip"),
        ('{"server_id": "10.0.0.1", "devices": [{"device_id": "x", "device_ip": "1.2.3.4"}]}',
         "not a number"),
        ('{"server_id": "10.0.0.1", "devices": [{"device_id": "0", "device_ip": "1.2.3.4"},'
         ' {"device_id": "0", "device_ip": "1.2.3.5"}]}', "duplicate device_id 0"),
        ('{"server_id": "10.0.0.1", "devices": [' + ",".join(
            f'{{"device_id": "{i}", "device_ip": "1.2.3.{i + 1}"}}' for i in range(3)) + "]}", "3 devices"),
        ('{"server_id": "10.0.0.999", "devices": [{"device_id": "0", "device_ip": "1.2.3.4"}]}',
         "not a well-formed IP"),
    ],
)
def test_ranktable_cli_rejects_bad_annotations_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "pod.json"
    path.write_text(content)
    code, out, err = run_cli(capsys, ["ranktable", "--annotations", str(path)])
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and message in err


def test_ranktable_cli_missing_file_and_no_source(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["ranktable", "--annotations", str(tmp_path / "missing.json")])
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "cannot read" in err
    code, out, err = run_cli(capsys, ["ranktable"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    code, out, err = run_cli(capsys, ["ranktable", "--inventory", "x", "--version", "2.0"])
    assert code == 2 and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("inventory", "message"),
    [
        ("nodes: []", "non-empty 'nodes'"),
        ("[1, 2", "not valid YAML"),
        ("nodes: [{name: a, host_ip: 10.0.0.1}]", "missing 'device_ips'"),
        ("nodes: [{name: a, host_ip: 10.0.0.1, device_ips: [1.1.1.1], gpu: 1}]", "unknown key 'gpu'"),
        ("nodes: [{name: Bad_Node, host_ip: 10.0.0.1, device_ips: [1.1.1.1]}]", "not a Kubernetes node name"),
        ("nodes: [{name: a, host_ip: 10.0.0.1, device_ips: [1.1.1.1]},"
         " {name: a, host_ip: 10.0.0.2, device_ips: [1.1.1.2]}]", "listed twice"),
        ("nodes: [{name: a, host_ip: 10.0.0.1, device_ips: [1.1.1.1, 1.1.1.1]}]", "used twice"),
        ("nodes: [{name: a, host_ip: 10.0.0.1, device_ips: [1.1.1.256]}]", "not a well-formed IP"),
    ],
)
def test_bad_inventories_are_rejected(tmp_path, inventory, message):
    path = tmp_path / "nodes.yaml"
    path.write_text(inventory)
    with pytest.raises(rt.RankTableError, match=message):
        rt.load_inventory(path)


def test_hccn_conf_fragment_and_visible_devices():
    conf = "\n".join(f"address_{i}=192.168.{100 + i % 4}.{101 + i // 4}\nnetmask_{i}=255.255.255.0"
                     for i in range(8))
    whole = rt.fragment_from_hccn_conf(conf, "10.0.0.1")
    assert [d["device_id"] for d in whole["devices"]] == [str(i) for i in range(8)]
    part = rt.fragment_from_hccn_conf(conf, "10.0.0.1", rt.parse_visible_devices("Ascend910-4,Ascend910-5"))
    assert part["devices"] == [{"device_id": "4", "device_ip": "192.168.100.102"},
                               {"device_id": "5", "device_ip": "192.168.101.102"}]
    assert rt.parse_visible_devices("0-3") == [0, 1, 2, 3]
    assert rt.parse_visible_devices("0,2") == [0, 2]
    with pytest.raises(rt.RankTableError, match="no address for device 9"):
        rt.fragment_from_hccn_conf(conf, "10.0.0.1", [9])
    with pytest.raises(rt.RankTableError, match="no address_"):
        rt.fragment_from_hccn_conf("# empty\n", "10.0.0.1")


# ----------------------------------------------------------------------------- dynamic mode

def _exchange_all(port: int, nodes: int, job: str = "leo-x", timeout: float = 20.0,
                  fragments: list | None = None) -> list:
    fragments = fragments or [rt.fragment_from_annotation(annotation(n)) for n in range(nodes)]
    results: list = [None] * nodes

    def pod(rank: int) -> None:
        try:
            results[rank] = rdv.dynamic_table(fragments[rank], job=job, node_rank=rank, nodes=nodes,
                                             master_addr="127.0.0.1", port=port, timeout=timeout,
                                             retry_interval=0.05)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            results[rank] = err

    threads = [threading.Thread(target=pod, args=(r,)) for r in reversed(range(nodes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    return results


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_dynamic_rendezvous_gives_every_pod_the_same_table(nodes):
    with rdv.FragmentRendezvous("leo-x", nodes, host="127.0.0.1", timeout=20) as server:
        results = _exchange_all(server.port, nodes)
    assert all(isinstance(r, dict) for r in results), results
    assert all(r == results[0] for r in results)
    assert results[0] == _expected_table(nodes)


def test_dynamic_pods_may_start_before_the_rendezvous():
    import socket

    with socket.socket() as probe:  # a free port, bound later by the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    holder: dict = {}

    def late_server() -> None:
        time.sleep(0.3)
        holder["server"] = rdv.FragmentRendezvous("leo-x", 2, host="127.0.0.1", port=port, timeout=20).start()

    starter = threading.Thread(target=late_server)
    starter.start()
    try:
        results = _exchange_all(port, 2)
    finally:
        starter.join()
        holder["server"].close()
    assert results[0] == results[1] == _expected_table(2)


def test_each_start_of_the_pods_is_a_new_round_and_other_jobs_are_refused():
    with rdv.FragmentRendezvous("leo-x", 2, host="127.0.0.1", timeout=20) as server:
        first = _exchange_all(server.port, 2)
        assert first[0] == _expected_table(2)
        moved = [rt.fragment_from_annotation(annotation(n)) for n in (0, 7)]  # rank 1 on a new node
        second = _exchange_all(server.port, 2, fragments=moved)
        assert second[0] == second[1] == rt.build_table(moved)
        with pytest.raises(rdv.RendezvousError, match="serves job 'leo-x'"):
            rdv.exchange_fragments(moved[0], job="other", node_rank=0, nodes=2,
                                  master_addr="127.0.0.1", port=server.port, timeout=5)


def test_dynamic_rendezvous_times_out_with_the_missing_ranks():
    with rdv.FragmentRendezvous("leo-x", 3, host="127.0.0.1", timeout=0.3) as server:
        with pytest.raises(rdv.RendezvousError, match=r"node ranks \[1, 2\]"):
            rdv.exchange_fragments(rt.fragment_from_annotation(annotation(0)), job="leo-x", node_rank=0,
                                  nodes=3, master_addr="127.0.0.1", port=server.port, timeout=5)


def test_exchange_gives_up_when_nobody_listens():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(rdv.RendezvousError, match="failed after"):
        rdv.exchange_fragments(rt.fragment_from_annotation(annotation(0)), job="j", node_rank=0, nodes=1,
                              master_addr="127.0.0.1", port=port, timeout=0.3, retry_interval=0.05)


# ----------------------------------------------------------------------------- controller mode

def test_controller_table_is_awaited_until_completed(tmp_path):
    path = tmp_path / "hccl.json"
    path.write_text('{"status":"initializing"}')
    polls: list[float] = []

    def controller_writes_on_third_poll(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            path.write_text(json.dumps(_expected_table(2)))

    table = rdv.wait_for_controller_table(path, servers=2, devices_per_server=8, timeout=60,
                                         poll_interval=0.01, sleep=controller_writes_on_third_poll)
    assert table == _expected_table(2)
    assert len(polls) == 2


def test_controller_wait_times_out_with_the_status(tmp_path):
    path = tmp_path / "hccl.json"
    path.write_text('{"status":"initializing"}')
    with pytest.raises(rdv.RendezvousError, match="status 'initializing'"):
        rdv.wait_for_controller_table(path, timeout=0.05, poll_interval=0.01)
    with pytest.raises(rdv.RendezvousError, match="status 'missing'"):
        rdv.wait_for_controller_table(Path(tmp_path / "absent.json"), timeout=0.0, poll_interval=0.01)


def test_completed_controller_table_is_validated(tmp_path):
    path = tmp_path / "hccl.json"
    table = _expected_table(2)
    table["server_list"][1]["device"][0]["rank_id"] = "0"
    path.write_text(json.dumps(table))
    with pytest.raises(rt.RankTableError, match="rank_id"):
        rdv.wait_for_controller_table(path, timeout=1, poll_interval=0.01)


def test_a_newer_request_of_the_same_rank_supersedes_the_older():
    fragments = [rt.fragment_from_annotation(annotation(n)) for n in range(2)]
    outcome: dict = {}
    with rdv.FragmentRendezvous("leo-x", 2, host="127.0.0.1", timeout=20) as server:

        def request(key: str, rank: int) -> None:
            try:
                outcome[key] = rdv.dynamic_table(fragments[rank], job="leo-x", node_rank=rank, nodes=2,
                                                master_addr="127.0.0.1", port=server.port, timeout=20)
            except rdv.RendezvousError as err:
                outcome[key] = str(err)

        def start_and_await(key: str, rank: int) -> threading.Thread:
            before = server._round.tokens.get(rank)
            thread = threading.Thread(target=request, args=(key, rank))
            thread.start()
            deadline = time.monotonic() + 10
            while server._round.tokens.get(rank) is before and time.monotonic() < deadline:
                time.sleep(0.01)  # poll until the server holds this request
            return thread

        threads = [start_and_await("old", 0), start_and_await("new", 0)]
        threads.append(threading.Thread(target=request, args=("other", 1)))
        threads[-1].start()
        for thread in threads:
            thread.join(10)
    assert "superseded" in outcome["old"]
    assert outcome["new"] == outcome["other"] == _expected_table(2)
