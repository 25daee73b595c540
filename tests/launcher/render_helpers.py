"""Helpers shared by the render, rank-table and CLI tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from launcher.cli.main import main


def run_cli(capsys: Any, argv: list[str]) -> tuple[int, str, str]:
    """Run `leo-launch ARGV` in-process; argparse's SystemExit becomes the exit code."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def host_ip(node: int) -> str:
    return f"10.0.{node // 200}.{node % 200 + 1}"


def device_ips(node: int, devices: int = 8) -> list[str]:
    return [f"192.{168 + node // 250}.{100 + d}.{node % 250 + 1}" for d in range(devices)]


def annotation(node: int, devices: int = 8, first_device: int = 0) -> dict[str, Any]:
    """A device-plugin annotation value as the Ascend device plugin writes it."""
    ips = device_ips(node, devices)
    return {
        "pod_name": f"job-{node}",
        "server_id": host_ip(node),
        "host_ip": host_ip(node),
        "devices": [{"device_id": str(first_device + d), "device_ip": ips[d]} for d in range(devices)],
    }


def write_annotations(directory: Path, nodes: int, devices: int = 8) -> list[str]:
    paths = []
    for node in range(nodes):
        path = directory / f"pod-{node}.json"
        path.write_text(json.dumps(annotation(node, devices)))
        paths.append(str(path))
    return paths


def write_inventory(path: Path, nodes: int, devices: int = 8) -> Path:
    data = {"nodes": [{"name": f"npu-node-{n}", "host_ip": host_ip(n), "device_ips": device_ips(n, devices)}
                      for n in range(nodes)]}
    path.write_text(yaml.safe_dump(data))
    return path


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name → value, or the valueFrom mapping."""
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container.get("env", [])}


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kind = "vcjob" if obj["apiVersion"].startswith("batch.volcano.sh/") else obj["kind"]
        out.setdefault(kind, []).append(obj)
    return out


def pod_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = by_kind(objects)
    if "Job" in kinds:
        return kinds["Job"][0]["spec"]["template"]
    return kinds["vcjob"][0]["spec"]["tasks"][0]["template"]
