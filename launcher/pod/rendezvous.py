"""Run-time rank tables in a pod: the dynamic exchange of fragments between the nodes of a
job over TCP (node rank 0 collects, every node gets the same table), and waiting for the
hccl-controller's table. The tables themselves are built by launcher.spec.ranktable."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError
from launcher.spec.ranktable import (
    STATUS_COMPLETED,
    RankTableError,
    build_table,
    check_fragment,
    validate_table,
)

_MAX_MESSAGE = 1 << 20


class RendezvousError(LaunchError):
    """The dynamic rank-table exchange failed at run time (retriable, exit code 1)."""


class FragmentRendezvous:
    """Node rank 0's collector of fragments: answers every pod with all of them.

    Protocol (one JSON line each way over TCP): the pod sends
    ``{"job": NAME, "nodes": N, "node_rank": R, "fragment": {...}}``; once one
    request of every rank 0..N-1 is in, all of them receive the same
    ``{"fragments": [f0, ..., fN-1]}`` (or ``{"error": "..."}``) and the next
    round starts empty. Each start of the job's pods is one round, so pods that
    restart on other nodes contribute fresh fragments. A newer request for a
    rank replaces the older one of the same round.
    """

    def __init__(self, job: str, nodes: int, host: str = "0.0.0.0", port: int = 0,
                 timeout: float = 600.0) -> None:
        import socket

        self.job, self.nodes, self.timeout = job, nodes, timeout
        self._cond = threading.Condition()
        self._round = _Round()
        self._closed = False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(max(16, nodes))
        self._sock.settimeout(0.1)  # lets the accept loop notice close()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def start(self) -> FragmentRendezvous:
        self._thread = threading.Thread(target=self._accept_loop, name="ranktable-rendezvous",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> FragmentRendezvous:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: Any) -> None:
        with conn:
            try:
                conn.settimeout(30)
                request = _read_line(conn)
                reply = self._answer(request)
            except (OSError, ValueError) as err:
                reply = {"error": f"bad request: {err}"}
            try:
                conn.sendall((json.dumps(reply) + "\n").encode())
            except OSError:
                pass

    def _answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            return {"error": "request must be a JSON object"}
        if request.get("job") != self.job or request.get("nodes") != self.nodes:
            return {"error": f"this rendezvous serves job {self.job!r} with {self.nodes} nodes"}
        rank = request.get("node_rank")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < self.nodes:
            return {"error": f"node_rank must be 0..{self.nodes - 1}"}
        try:
            fragment = request.get("fragment")
            check_fragment(fragment, f"node {rank}")
        except RankTableError as err:
            return {"error": str(err)}
        deadline = time.monotonic() + self.timeout
        token = object()
        with self._cond:
            current = self._round
            current.fragments[rank] = fragment
            current.tokens[rank] = token
            self._cond.notify_all()  # wakes a superseded request of the same rank
            if len(current.fragments) == self.nodes:
                current.result = [current.fragments[r] for r in range(self.nodes)]
                self._round = _Round()
            while current.result is None:
                if self._closed:
                    return {"error": "rendezvous closed"}
                if current.tokens.get(rank) is not token:
                    return {"error": f"superseded by a newer request of node rank {rank}"}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(set(range(self.nodes)) - set(current.fragments))
                    del current.fragments[rank], current.tokens[rank]
                    return {"error": f"timed out waiting for node ranks {missing}"}
                self._cond.wait(remaining)
            return {"fragments": current.result}


@dataclass
class _Round:
    fragments: dict[int, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[int, object] = field(default_factory=dict)
    result: list[dict[str, Any]] | None = None


def exchange_fragments(fragment: dict[str, Any], *, job: str, node_rank: int, nodes: int,
                       master_addr: str, port: int, timeout: float = 600.0,
                       retry_interval: float = 1.0,
                       sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Send this pod's fragment to the rendezvous; return all fragments in node-rank order.

    Retries while the master's name does not resolve yet or nothing listens
    (pods start in any order) until `timeout` seconds have passed.
    """
    import socket

    check_fragment(fragment, f"node {node_rank}")
    message = (json.dumps({"job": job, "nodes": nodes, "node_rank": node_rank,
                           "fragment": fragment}) + "\n").encode()
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RendezvousError(f"rank-table rendezvous at {master_addr}:{port} failed "
                                  f"after {timeout:g}s: {last_error}")
        try:
            with socket.create_connection((master_addr, port), timeout=min(10.0, remaining)) as conn:
                conn.sendall(message)
                conn.settimeout(remaining)
                reply = _read_line(conn)
        except (OSError, ValueError) as err:
            last_error = str(err) or type(err).__name__
            sleep(min(retry_interval, max(0.0, deadline - time.monotonic())))
            continue
        if not isinstance(reply, dict) or "fragments" not in reply:
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise RendezvousError(f"rank-table rendezvous refused node {node_rank}: {error}")
        return list(reply["fragments"])


def dynamic_table(fragment: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """`exchange_fragments` then `build_table`: the same table on every pod."""
    return build_table(exchange_fragments(fragment, **kwargs))


def _read_line(conn: Any) -> Any:
    chunks = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk or size > _MAX_MESSAGE:
            break
    data = b"".join(chunks)
    if b"\n" not in data:
        raise ValueError("connection closed before a full message arrived")
    return json.loads(data.split(b"\n", 1)[0])


def wait_for_controller_table(path: str | Path, *, servers: int | None = None,
                              devices_per_server: int | None = None, timeout: float = 600.0,
                              poll_interval: float = 2.0,
                              sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the hccl-controller's `hccl.json` until `status` is `completed`; return the table."""
    deadline = time.monotonic() + timeout
    status: Any = "missing"
    while True:
        try:
            table = json.loads(Path(path).read_text())
            status = table.get("status") if isinstance(table, dict) else "not an object"
        except FileNotFoundError:
            table, status = None, "missing"
        except (OSError, json.JSONDecodeError):
            table, status = None, "unreadable"  # the controller may be mid-write
        if status == STATUS_COMPLETED:
            return validate_table(table, servers=servers, devices_per_server=devices_per_server)
        if time.monotonic() >= deadline:
            raise RendezvousError(f"hccl-controller did not complete {path} within {timeout:g}s "
                                  f"(status {status!r}); is the hccl-controller running?")
        sleep(poll_interval)
