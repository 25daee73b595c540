"""Hostile values for render/submit (issue 12, cases 3, 4, 6, 7): numbers that would loop,
URLs and endpoints the pods refuse, credentials in endpoints, inventories built to blow up
memory or time."""

from __future__ import annotations

import time

import pytest

from launcher.cli import main as cli
from launcher.errors import UsageError
from launcher.spec.jobspec import build_job_spec
from launcher.spec.ranktable import RankTableError, load_inventory
from launcher.storage.base import parse_url

BASE = ["render", "--exp", "mini_5shot", "--accel", "cpu", "--data-url", "s3://bkt/data",
        "--train-url", "s3://bkt/runs"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ case 3: bounded numbers


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flags", [
    ["--cards", "99999999999999999999999"],
    ["--cards", "65537"],
    ["--cards", "8", "--nodes", "99999999999999999999"],
    ["--cards", "1", "--steps", "99999999999999999999"],
    ["--cards", "1", "--cluster-timeout", "99999999999999999999"],
])
def test_huge_numbers_are_refused_at_once(capsys, flags):
    started = time.monotonic()
    code, _, err = run_cli(capsys, *[a for a in BASE if a != "--cards"], *flags)
    assert code == 2 and "must be at most" in err and err.count("\n") == 1
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ case 4: one URL parser


@pytest.mark.parametrize("url", [
    "s3://bkt/a?x=1", "s3://bkt/a/../../b", "s3://bkt/a\\b", "s3://bkt/a//b", "s3://bkt/a#b",
    "obs://bkt/./a",
])
def test_urls_the_pods_refuse_are_refused_by_render(capsys, url):
    with pytest.raises(UsageError):
        parse_url(url)  # what the bootstrap does at run time
    for flag in ("--data-url", "--train-url"):
        args = [a for a in BASE]
        args[args.index(flag) + 1] = url
        code, out, err = run_cli(capsys, *args, "--cards", "1")
        assert code == 2 and out == "" and err.count("\n") == 1 and flag in err


def test_submit_local_refuses_a_url_the_pod_refuses(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    code, _, err = run_cli(capsys, "submit", "--backend", "local", "--exp", "mini_5shot",
                           "--accel", "cpu", "--cards", "1", "--data-url", "s3://bkt/a?b",
                           "--name", "leo-q")
    assert code == 2 and "--data-url" in err
    assert not (tmp_path / "leo-launch" / "jobs" / "leo-q").exists()


@pytest.mark.parametrize("endpoint", [
    "https://obs.example.com/path", "https://obs.example.com?x=1", "https://obs.example.com/#f",
    "https://obs.example.com:0", "http://[::1", "https://obs.example.com/ ",
])
def test_endpoints_the_pods_refuse_are_refused_by_render(capsys, endpoint):
    from launcher.storage.base import StorageOptions

    with pytest.raises(UsageError):
        StorageOptions(endpoint=endpoint)
    code, _, err = run_cli(capsys, *BASE, "--cards", "1", "--storage-endpoint", endpoint)
    assert code == 2 and err.count("\n") == 1


# ------------------------------------------------------------------ case 7: credentials


def test_credentials_in_an_endpoint_are_refused_and_never_printed(capsys):
    endpoint = "https://user:PASSWORD@obs.example.com"
    code, out, err = run_cli(capsys, *BASE, "--cards", "1", "--storage-endpoint", endpoint)
    assert code == 2 and "credentials" in err
    assert "PASSWORD" not in out + err
    code, out, err = run_cli(capsys, "--debug", *BASE, "--cards", "1", "--storage-endpoint", endpoint)
    assert code == 2 and "Traceback" in err and "PASSWORD" not in out + err
    with pytest.raises(UsageError) as info:
        build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=1, storage_endpoint=endpoint)
    assert "PASSWORD" not in str(info.value)


def test_storage_commands_refuse_credentials_in_the_endpoint_too(capsys, tmp_path):
    code, out, err = run_cli(capsys, "pull", "s3://bkt/job", "--storage-endpoint",
                             "http://me:PASSWORD@127.0.0.1:9", "--to", str(tmp_path))
    assert code == 2 and "credentials" in err and "PASSWORD" not in out + err


def test_urls_in_any_error_message_are_redacted(capsys, monkeypatch):
    from launcher.errors import LaunchError

    def fail(args):
        raise LaunchError("cannot reach https://admin:hunter2@10.0.0.1:9000/bucket")

    monkeypatch.setattr("launcher.cli.cmd_experiments.run", fail)
    code = cli.main(["--debug", "experiments"])
    err = capsys.readouterr().err
    assert code == 1 and "hunter2" not in err and "https://10.0.0.1:9000/bucket" in err


# ------------------------------------------------------------------ case 6: inventories


def inventory_text(count: int, ip=lambda i: f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") -> str:
    lines = ["nodes:"]
    for i in range(count):
        lines.append(f"- {{name: node-{i}, host_ip: {ip(i)}, device_ips: [{ip(i + 10**6)}]}}")
    return "\n".join(lines) + "\n"


def test_a_non_utf8_inventory_names_the_file(tmp_path, capsys):
    path = tmp_path / "inv.yaml"
    path.write_bytes(b"nodes:\n- {name: n\xff}\n")
    with pytest.raises(RankTableError, match=f"cannot read inventory {path}: it is not UTF-8"):
        load_inventory(path)
    code, _, err = run_cli(capsys, "ranktable", "--inventory", str(path))
    assert code == 2 and str(path) in err and err.count("\n") == 1


@pytest.mark.timeout(30)
def test_a_yaml_alias_bomb_is_refused_small_and_fast(tmp_path, capsys):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghi":
        prev = chr(ord(level) - 1)
        bomb.append(f"{level}: &{level} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, "
                    f"*{prev}, *{prev}, *{prev}]")
    bomb.append("nodes: [{name: *i, host_ip: *i, device_ips: *i}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(bomb) + "\n")
    assert path.stat().st_size < 1000
    started = time.monotonic()
    code, _, err = run_cli(capsys, "ranktable", "--inventory", str(path))
    assert code == 2 and "aliases" in err and len(err) < 300
    assert time.monotonic() - started < 5


@pytest.mark.timeout(60)
def test_many_nodes_are_checked_in_linear_time(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(inventory_text(8000))
    started = time.monotonic()
    assert len(load_inventory(path)) == 8000
    assert time.monotonic() - started < 20
    path.write_text(inventory_text(8193))
    with pytest.raises(RankTableError, match="at most 8192"):
        load_inventory(path)


@pytest.mark.parametrize("first,second", [("fe80::1", "fe80:0::1"), ("::ffff:10.0.0.1", "::ffff:a00:1"),
                                          ("2001:db8::1", "2001:DB8:0:0::1")])
def test_one_ip_address_written_two_ways_is_a_duplicate(tmp_path, first, second):
    path = tmp_path / "inv.yaml"
    path.write_text(f"nodes:\n- {{name: a, host_ip: '{first}', device_ips: ['10.1.0.1']}}\n"
                    f"- {{name: b, host_ip: '{second}', device_ips: ['10.1.0.2']}}\n")
    with pytest.raises(RankTableError, match="appears twice"):
        load_inventory(path)
    path.write_text(f"nodes:\n- {{name: a, host_ip: 10.0.0.1, device_ips: ['{first}', '{second}']}}\n")
    with pytest.raises(RankTableError, match="used twice"):
        load_inventory(path)
