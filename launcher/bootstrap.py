"""The bootstrap of one node of a job: `python -m launcher.bootstrap`.

It is the training images' entrypoint (every pod runs it) and what the local backend
runs on this machine. In order:

1. reads the resolved job (`job.yaml`, `experiment.yaml`) from `$LEO_CONFIG_DIR`
   (default /etc/leo-launch, where the job's ConfigMap is mounted) and finds this node's
   rank (`LEO_NODE_RANK`, `JOB_COMPLETION_INDEX`, `VC_TASK_INDEX`; with an inventory,
   the node's place in it);
2. stages `data_url` into `$LEO_CACHE_DIR` (default /cache) once per node;
3. brings `train_url`'s latest checkpoint (and metrics, and this node's earlier logs)
   into the local output directory, so training resumes where the job stopped;
4. Ascend: prepares the HCCL rank table (dynamic rendezvous, hccl-controller or the
   ConfigMap's file); NVIDIA/CPU: msrun's dynamic cluster needs only the master address;
5. runs `msrun --join True ... leo_core/train.py --config experiment.yaml --resume ...`
   and prints every worker's lines on stdout as `[rank R] line` (its own as `[node K] ...`),
   keeping them in `logs/rank-R.log`;
6. publishes checkpoints, metrics and logs to `<train_url>/<job>/` while training
   (node 0: everything; other nodes: their ranks' logs), every `$LEO_PUBLISH_INTERVAL`
   seconds (default 30);
7. node 0 then evaluates the best checkpoint on meta-test (50 × metatest_batch_size
   tasks, 10,000 by default; `$LEO_EVAL_TASKS` overrides) into `result.json`, publishes it
   and the rest, and exits.

Exit codes (the Job's podFailurePolicy and Volcano's policies read them):
0 done; 2 bad configuration (`EXIT_BAD_CONFIG`: unreadable job, bad experiment, missing
data, a worker that exited 2) — retrying cannot help; 1 anything else (retriable: a dead
peer, storage trouble, ...); 143 terminated by SIGTERM (after a last publication).

Variables for the local backend (pods need none of them): `LEO_WORK_DIR` (outputs, logs;
default `$LEO_CACHE_DIR/job`), `LEO_MASTER_ADDR` / `LEO_MASTER_PORT` (override the
job's), `LEO_STATUS_FILE` (the bootstrap writes its stage there as JSON).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from launcher import jobspec as js
from launcher.errors import LaunchError, UsageError

ENV_WORK_DIR = "LEO_WORK_DIR"
ENV_PUBLISH_INTERVAL = "LEO_PUBLISH_INTERVAL"
ENV_EVAL_TASKS = "LEO_EVAL_TASKS"
ENV_STATUS_FILE = "LEO_STATUS_FILE"
ENV_PROCESS_MARK = "LEO_BOOTSTRAP_MARK"  # carried by msrun, its workers and the evaluation
DEFAULT_PUBLISH_INTERVAL = 30.0
FAILED_PUBLISH_TIMEOUT = 20.0  # seconds for the last publication after a failed run
# set when a last publication was given up: its upload threads must not delay the exit
ABANDONED_PUBLICATION = threading.Event()
EXIT_RETRIABLE = 1
EXIT_TERMINATED = 143
DEVICES = {"cpu": "CPU", "nvidia": "GPU", "ascend": "Ascend"}
EVAL_BATCHES = 50  # meta-test: 50 batches of metatest_batch_size tasks (the original's 10,000)
# msrun variables that must not leak into a launch from the caller's environment
_INHERITED = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
              "RANK_ID", "RANK_SIZE", "DEVICE_ID", ENV_PROCESS_MARK)
# MindSpore's C++ INFO/DEBUG lines: dropped (GLOG_v=2 should keep them away anyway)
_NOISE = re.compile(rb"^\[(INFO|DEBUG)\] ")
_ERROR_CODE = re.compile(r"exit with exception\. Error code: (-?\d+)")


class BadConfig(UsageError):
    """The job cannot run as configured: exit code 2, not retried."""


class Terminated(BaseException):
    """SIGTERM/SIGINT arrived: unwind (cleanup and a last publication run in `finally`)."""


# ------------------------------------------------------------------ output


class Output:
    """Thread-safe writer of tagged lines to stdout."""

    def __init__(self, stream: TextIO | None = None, node_rank: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.node_rank = node_rank
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self.stream.write(line.rstrip("\n") + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone: keep training, the rank logs still get everything

    def node(self, text: str) -> None:
        tag = "?" if self.node_rank is None else self.node_rank
        for line in str(text).splitlines() or [""]:
            self.write(f"[node {tag}] {line}")

    def rank(self, rank: int, text: str) -> None:
        self.write(f"[rank {rank}] {text}")


class LogRelay(threading.Thread):
    """Follows msrun's `worker_<r>.log` of this node's ranks: every new line goes to stdout
    as `[rank r] line` and is appended to `<logs>/rank-<r>.log` (what gets published)."""

    def __init__(self, msrun_dir: Path, ranks: list[int], logs_dir: Path, out: Output,
                 interval: float = 0.3) -> None:
        super().__init__(name="leo-log-relay", daemon=True)
        self.msrun_dir, self.ranks, self.logs_dir, self.out = msrun_dir, ranks, logs_dir, out
        self.interval = interval
        self._halt = threading.Event()
        self._inputs: dict[int, Any] = {}
        self._partial: dict[int, bytes] = {r: b"" for r in ranks}
        logs_dir.mkdir(parents=True, exist_ok=True)
        self._outputs = {r: open(logs_dir / f"rank-{r}.log", "ab") for r in ranks}  # noqa: SIM115

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.pump()
        self.pump(final=True)

    def pump(self, final: bool = False) -> None:
        for rank in self.ranks:
            handle = self._inputs.get(rank)
            if handle is None:
                try:
                    handle = self._inputs[rank] = open(self.msrun_dir / f"worker_{rank}.log", "rb")  # noqa: SIM115
                except FileNotFoundError:
                    continue
            data = self._partial[rank] + handle.read()
            lines = data.split(b"\n")
            self._partial[rank] = lines.pop()
            if final and self._partial[rank]:
                lines.append(self._partial[rank])
                self._partial[rank] = b""
            for raw in lines:
                self.emit(rank, raw)
            self._outputs[rank].flush()

    def emit(self, rank: int, raw: bytes) -> None:
        raw = raw.rstrip(b"\r")
        if _NOISE.match(raw):
            return
        self._outputs[rank].write(raw + b"\n")
        self.out.rank(rank, raw.decode("utf-8", errors="replace"))

    def write_line(self, rank: int, text: str) -> None:
        """A line of our own into rank `rank`'s log (e.g. the evaluation's output)."""
        self.emit(rank, text.encode())
        self._outputs[rank].flush()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join()
        else:
            self.pump(final=True)

    def close(self) -> None:
        self.stop()
        for handle in [*self._inputs.values(), *self._outputs.values()]:
            handle.close()


# ------------------------------------------------------------------ processes


def marked_processes(var: str, value: str, exclude: set[int] | None = None) -> list[Any]:
    """Live processes whose environment has `var=value` (all of a launch: msrun starts
    each worker in a session of its own, so neither the process tree nor a process group
    finds them all once msrun is gone)."""
    import psutil

    found = []
    exclude = exclude or set()
    for proc in psutil.process_iter():
        if proc.pid in exclude or proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(var) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def kill_processes(procs: list[Any], grace: float = 0.0) -> None:
    """SIGTERM (when `grace` > 0) then SIGKILL `procs` and their process groups (never
    our own group)."""
    import psutil

    own = os.getpgrp()
    if grace > 0:
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=grace)
    groups = set()
    for proc in procs:
        try:
            groups.add(os.getpgid(proc.pid))
        except OSError:
            pass
    for group in groups - {own, 0, 1}:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def kill_marked(var: str, value: str, exclude: set[int] | None = None, grace: float = 0.0) -> int:
    """Kill every process marked `var=value`, repeating until none is left; returns how
    many were found."""
    total = 0
    for _ in range(5):
        procs = marked_processes(var, value, exclude)
        if not procs:
            break
        total += len(procs)
        kill_processes(procs, grace)
        grace = 0.0
    return total


# ------------------------------------------------------------------ the bootstrap


@dataclasses.dataclass
class Paths:
    config_dir: Path
    cache: Path
    work: Path

    @property
    def job_file(self) -> Path:
        return self.config_dir / js.JOB_FILE

    @property
    def experiment_file(self) -> Path:
        return self.config_dir / js.EXPERIMENT_FILE

    @property
    def out(self) -> Path:
        return self.work / "out"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    @property
    def msrun_logs(self) -> Path:
        return self.work / "msrun"

    @property
    def previous_logs(self) -> Path:
        return self.work / "previous-logs"

    @property
    def nothing(self) -> Path:
        return self.work / "nothing"  # the out dir of non-zero nodes' publishers


def paths_from_env(env: Mapping[str, str]) -> Paths:
    config_dir = Path(env.get(js.ENV_CONFIG_DIR) or js.CONFIG_DIR)
    cache = Path(env.get(js.ENV_CACHE_DIR) or js.CACHE_DIR)
    work = Path(env.get(ENV_WORK_DIR) or cache / "job")
    return Paths(config_dir, cache, work)


def load_job(paths: Paths) -> tuple[js.JobSpec, Any]:
    """The job's spec and experiment config (BadConfig when unreadable or invalid)."""
    from leo_core.config import ConfigError, load_config_file

    try:
        text = paths.job_file.read_text()
    except OSError as err:
        raise BadConfig(f"cannot read the job spec {paths.job_file}: {err.strerror or err} "
                        f"(is the job's ConfigMap mounted at {paths.config_dir}?)") from None
    try:
        spec = js.JobSpec.from_yaml(text)
    except UsageError as err:
        raise BadConfig(f"{paths.job_file}: {err}") from None
    try:
        config = load_config_file(paths.experiment_file)
    except ConfigError as err:
        raise BadConfig(str(err)) from None
    if config.name != spec.experiment:
        raise BadConfig(f"{paths.experiment_file} is experiment {config.name!r} but the job is "
                        f"{spec.experiment!r}")
    return spec, config


def node_rank_of(spec: js.JobSpec, env: Mapping[str, str]) -> int:
    if spec.rank_table == "file":
        node = env.get("NODE_NAME", "")
        if not node:
            raise BadConfig("NODE_NAME is not set: an inventory job finds its node rank by node name")
        rank = spec.inventory_rank(node)
    else:
        rank = js.node_rank_from_env(env)
    if not 0 <= rank < spec.nodes:
        raise BadConfig(f"node rank {rank} is outside 0..{spec.nodes - 1}")
    return rank


def check_data_root(root: Path, config: Any) -> None:
    """Every split the experiment reads is there (else: bad data_url, exit 2)."""
    base = root / config.dataset_name / config.embedding_crop
    missing = [name for name in ("train", "val", "test")
               if not (base / f"{name}_embeddings.pkl").is_file()]
    if missing:
        raise BadConfig(f"the staged data has no {base.relative_to(root)}/{missing[0]}_embeddings.pkl: "
                        f"data_url does not hold {config.dataset_name} {config.embedding_crop} embeddings")


def resolve_master(addr: str, timeout: float, sleep: Any = time.sleep) -> str:
    """The master's IP address; waits for its DNS name (the headless Service publishes the
    pod's address only once the pod exists)."""
    try:
        return str(ipaddress.ip_address(addr.strip("[]")))
    except ValueError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.getaddrinfo(addr, None, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0]
        except OSError as err:
            if time.monotonic() >= deadline:
                raise LaunchError(f"the master address {addr} did not resolve within "
                                  f"{timeout:.0f} s: {err}") from None
            sleep(2.0)


def log_every(config: Any) -> int:
    """Progress lines: ten per validation period, at most every 100 steps."""
    return max(1, min(100, config.checkpoint_steps // 10))


def eval_tasks(config: Any, env: Mapping[str, str]) -> int:
    value = env.get(ENV_EVAL_TASKS, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise BadConfig(f"{ENV_EVAL_TASKS}={value!r} is not a positive number")
        return int(value)
    return EVAL_BATCHES * config.metatest_batch_size


def prepare_rank_table(spec: js.JobSpec, node_rank: int, env: Mapping[str, str], master_ip: str,
                       out: Output, *, config_dir: Path | None = None) -> str | None:
    """Ascend: the HCCL rank table's path for msrun (None for NVIDIA and CPU)."""
    if spec.accelerator != "ascend":
        return None
    from launcher import ranktable as rt

    mode = spec.rank_table
    if mode == "file":
        path = (config_dir or Path(js.CONFIG_DIR)) / js.RANK_TABLE_FILE
        try:
            rt.validate_table(json.loads(path.read_text()), servers=spec.nodes,
                              devices_per_server=spec.cards_per_node)
        except (OSError, ValueError) as err:
            raise BadConfig(f"rank table {path}: {err}") from None
        return str(path)
    if mode == "controller":
        out.node(f"waiting for the hccl-controller to complete {js.CONTROLLER_RANK_TABLE_PATH}")
        rt.wait_for_controller_table(js.CONTROLLER_RANK_TABLE_PATH, servers=spec.nodes,
                                     devices_per_server=spec.cards_per_node,
                                     timeout=spec.cluster_timeout)
        return js.CONTROLLER_RANK_TABLE_PATH
    # dynamic: every node sends its fragment to node 0's rendezvous
    annotation = env.get(js.ENV_ASCEND_DEVICES, "").strip()
    if annotation:
        fragment = rt.fragment_from_annotation(annotation, js.ASCEND_DEVICE_ANNOTATION)
    else:
        server_id = env.get("HOST_IP") or env.get("POD_IP") or master_ip
        visible = env.get("ASCEND_VISIBLE_DEVICES", "").strip()
        devices = rt.parse_visible_devices(visible) if visible else list(range(spec.cards_per_node))
        try:
            text = Path(rt.HCCN_CONF).read_text()
        except OSError as err:
            raise BadConfig(f"no device-plugin annotation and cannot read {rt.HCCN_CONF}: "
                            f"{err.strerror or err}") from None
        fragment = rt.fragment_from_hccn_conf(text, server_id, devices)
    out.node(f"exchanging rank-table fragments with {spec.nodes} node(s) via {master_ip}:{spec.ranktable_port}")
    table = rt.dynamic_table(fragment, job=spec.name, node_rank=node_rank, nodes=spec.nodes,
                             master_addr=master_ip, port=spec.ranktable_port,
                             timeout=spec.cluster_timeout)
    path = Path(js.DYNAMIC_RANK_TABLE_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rt.dumps(table))
    return str(path)


class Bootstrap:
    """One run of the bootstrap (see the module docstring)."""

    def __init__(self, environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> None:
        self.env = dict(os.environ if environ is None else environ)
        self.out = Output(stream)
        self.paths = paths_from_env(self.env)
        self.mark = uuid.uuid4().hex
        self.terminating = threading.Event()
        self.msrun: subprocess.Popen | None = None
        self.worker_codes: list[int] = []
        self.publisher: Any = None
        self.relay: LogRelay | None = None
        self._status_file = self.env.get(ENV_STATUS_FILE)

    # -------------------------------------------------------------- helpers
    def stage(self, name: str, **extra: Any) -> None:
        if not self._status_file:
            return
        data = json.dumps({"stage": name, "time": time.time(), "pid": os.getpid(), **extra})
        tmp = Path(f"{self._status_file}.tmp{os.getpid()}")
        try:
            tmp.write_text(data)
            os.replace(tmp, self._status_file)
        except OSError:
            pass

    def storage_options(self, spec: js.JobSpec) -> Any:
        from launcher.storage import StorageOptions

        return StorageOptions(endpoint=spec.storage_endpoint, progress=False)

    def on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.terminating.is_set():
            return
        self.terminating.set()
        self.out.node(f"received {signal.Signals(signum).name}: stopping")
        self.stop_training()
        raise Terminated(signum)

    def stop_training(self) -> None:
        proc = self.msrun
        if proc is not None and proc.poll() is None:
            try:
                import psutil

                root = psutil.Process(proc.pid)
                kill_processes([root, *root.children(recursive=True)])
            except Exception:  # noqa: BLE001 - already gone
                pass
        kill_marked(ENV_PROCESS_MARK, self.mark, exclude={os.getpid()})

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k not in _INHERITED}
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # msrun runs `python`
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("GLOG_v", "2")
        env[ENV_PROCESS_MARK] = self.mark
        return env

    # -------------------------------------------------------------- steps
    def run(self) -> int:
        spec, config = load_job(self.paths)
        node_rank = node_rank_of(spec, self.env)
        self.out.node_rank = node_rank
        port = self.env.get(js.ENV_MASTER_PORT, "").strip()
        if port and port != str(spec.master_port):
            try:
                spec = dataclasses.replace(spec, master_port=int(port))
            except ValueError:
                raise BadConfig(f"{js.ENV_MASTER_PORT}={port!r} is not a port") from None
        if spec.data_url is None:
            raise BadConfig("the job has no data_url: submit it with --data-url")
        local_ranks = list(range(node_rank * spec.cards_per_node, (node_rank + 1) * spec.cards_per_node))
        self.out.node(f"job {spec.name}: {spec.experiment}, node {node_rank} of {spec.nodes}, "
                      f"ranks {local_ranks[0]}-{local_ranks[-1]} of {spec.world_size} on {spec.accelerator}")
        for path in (self.paths.out, self.paths.logs, self.paths.cache):
            path.mkdir(parents=True, exist_ok=True)
        job_url = None
        if spec.train_url:
            from launcher.storage import parse_url

            job_url = str(parse_url(spec.train_url).child(spec.name))

        root = self.stage_data(spec, config)
        resumed = self.resume(spec, job_url, local_ranks)
        self.stage("preparing")
        addr = self.env.get(js.ENV_MASTER_ADDR) or spec.master_addr
        if node_rank == 0 and self.env.get("POD_IP"):
            master_ip = self.env["POD_IP"]  # our own address: no need to wait for DNS
        else:
            master_ip = resolve_master(addr, spec.cluster_timeout)
        server = None
        code: int | None = None
        if spec.accelerator == "ascend" and spec.rank_table == "dynamic" and node_rank == 0:
            from launcher.ranktable import FragmentRendezvous

            server = FragmentRendezvous(spec.name, spec.nodes, port=spec.ranktable_port,
                                        timeout=spec.cluster_timeout).start()
        try:
            table = prepare_rank_table(spec, node_rank, self.env, master_ip, self.out,
                                       config_dir=self.paths.config_dir)
            if job_url:
                self.start_publishing(spec, job_url, node_rank)
            code = self.train(spec, config, node_rank, local_ranks, master_ip, table, root, resumed)
            if code == 0 and node_rank == 0 and not self.terminating.is_set():
                code = self.evaluate(spec, config, root)
        finally:
            if server is not None:
                server.close()
            if self.relay is not None:
                self.relay.close()
            # After a failure storage may be unreachable too (a node cut off): a bounded
            # last publication keeps the documented 60 s from a death to every exit.
            self.finish_publishing(None if code == 0 else FAILED_PUBLISH_TIMEOUT)
        if self.terminating.is_set():
            return EXIT_TERMINATED
        if code == 0:
            self.stage("done")
            self.out.node("done")
        return code

    def stage_data(self, spec: js.JobSpec, config: Any) -> Path:
        from launcher.storage import NotFoundError, StorageError, parse_url
        from launcher.storage_stage import find_data_root, stage

        url = parse_url(spec.data_url)
        if url.is_local:  # a directory used in place: what it lacks will not appear by retrying
            if not Path(url.path).exists():
                raise BadConfig(f"data_url {url}: no such file or directory")
            if Path(url.path).is_dir():
                try:
                    find_data_root(Path(url.path))
                except StorageError as err:
                    raise BadConfig(f"data_url: {err}") from None
        self.stage("staging")
        self.out.node(f"staging {spec.data_url} into {self.paths.cache}")
        started = time.monotonic()
        try:
            root = stage(spec.data_url, self.paths.cache, options=self.storage_options(spec))
        except NotFoundError as err:
            raise BadConfig(f"data_url: {err}") from None
        check_data_root(root, config)
        self.out.node(f"data ready in {root} ({time.monotonic() - started:.1f} s)")
        return root

    def resume(self, spec: js.JobSpec, job_url: str | None, local_ranks: list[int]) -> int | None:
        if not job_url:
            return None
        from launcher.publish import resume_from_remote

        self.stage("resuming")
        previous = self.paths.previous_logs
        step = resume_from_remote(job_url, self.paths.out, logs_dir=previous,
                                  options=self.storage_options(spec))
        for rank in local_ranks:  # only this node's ranks: others publish their own
            src, dest = previous / f"rank-{rank}.log", self.paths.logs / f"rank-{rank}.log"
            if src.is_file() and not dest.exists():
                os.replace(src, dest)
        shutil.rmtree(previous, ignore_errors=True)
        if step is not None:
            self.out.node(f"resuming from the checkpoint of step {step} in {job_url}")
        return step

    def start_publishing(self, spec: js.JobSpec, job_url: str, node_rank: int) -> None:
        from launcher.publish import Publisher

        interval = self.env.get(ENV_PUBLISH_INTERVAL, "").strip()
        try:
            seconds = float(interval) if interval else DEFAULT_PUBLISH_INTERVAL
        except ValueError:
            raise BadConfig(f"{ENV_PUBLISH_INTERVAL}={interval!r} is not a number of seconds") from None
        out_dir = self.paths.out if node_rank == 0 else self.paths.nothing
        out_dir.mkdir(parents=True, exist_ok=True)
        self.publisher = Publisher(out_dir, job_url, logs_dir=self.paths.logs,
                                   options=self.storage_options(spec))
        if node_rank == 0:
            self.publisher.put_file(self.paths.job_file, "job.yaml")
            self.publisher.put_file(self.paths.experiment_file, "experiment.yaml")
            self.out.node(f"publishing checkpoints, metrics and logs to {job_url} every {seconds:g} s")
        self.publisher.start(max(seconds, 0.2))

    def finish_publishing(self, timeout: float | None = None) -> None:
        """The last publication; with `timeout`, given up (with a warning) after that many
        seconds: the publisher's store is then left to the dying process."""
        publisher, self.publisher = self.publisher, None
        if publisher is None:
            return
        failed: list[BaseException] = []

        def last() -> None:
            try:
                publisher.final()
            except Exception as err:  # noqa: BLE001 - reported below
                failed.append(err)

        thread = threading.Thread(target=last, name="leo-last-publication", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            self.out.node(f"warning: last publication gave up after {timeout:g} s "
                          f"(is {publisher.url} reachable?)")
            ABANDONED_PUBLICATION.set()
            return
        if failed:
            err = failed[0]
            self.out.node(f"warning: last publication failed: {str(err).splitlines()[0] if str(err) else err}")
        publisher.close()

    def train(self, spec: js.JobSpec, config: Any, node_rank: int, local_ranks: list[int],
              master_ip: str, table: str | None, root: Path, resumed: int | None) -> int:
        import importlib.util

        script = importlib.util.find_spec("leo_core.train").origin
        msrun_dir = self.paths.msrun_logs
        shutil.rmtree(msrun_dir, ignore_errors=True)
        msrun_dir.mkdir(parents=True)
        msrun = Path(sys.executable).parent / "msrun"
        cmd = [str(msrun) if msrun.exists() else "msrun",
               *spec.msrun_args(node_rank, log_dir=str(msrun_dir), master_addr=master_ip,
                                rank_table_file=table),
               # an id no worker has: msrun's own tailing off, we relay with rank tags
               "--tail_worker_log", str(spec.world_size),
               script, "--config", str(self.paths.experiment_file), "--data-root", str(root),
               "--out", str(self.paths.out), "--resume", "--device", DEVICES[spec.accelerator],
               "--log-every", str(log_every(config))]
        env = self.child_env()
        if table:
            env["RANK_TABLE_FILE"] = table
        self.stage("training", resumed_step=resumed)
        self.out.node(f"starting {spec.cards_per_node} training process(es) with msrun "
                      f"(master {master_ip}:{spec.master_port})")
        self.relay = LogRelay(msrun_dir, local_ranks, self.paths.logs, self.out)
        self.relay.start()
        try:
            self.msrun = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=self.paths.work,
                                          start_new_session=True)
            if self.terminating.is_set():  # a signal arrived while starting
                self.stop_training()
            assert self.msrun.stdout is not None
            for raw in self.msrun.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip()
                match = _ERROR_CODE.search(line)
                if match:
                    self.worker_codes.append(int(match.group(1)))
                if "tail_worker_log" in line or _NOISE.match(raw) or not line:
                    continue
                self.out.node(f"msrun: {line}")
            code = self.msrun.wait()
        finally:
            self.relay.stop()
            kill_marked(ENV_PROCESS_MARK, self.mark, exclude={os.getpid()})  # no stragglers
        if self.terminating.is_set():
            return EXIT_TERMINATED
        if code == 0:
            return 0
        if js.EXIT_BAD_CONFIG in self.worker_codes:
            self.out.node(f"training failed: a worker exited with code {js.EXIT_BAD_CONFIG} "
                          "(bad configuration or data); not retrying")
            return js.EXIT_BAD_CONFIG
        codes = ", ".join(str(c) for c in self.worker_codes) or "none reported"
        self.out.node(f"training failed: msrun exited with {code} (worker exit codes: {codes})")
        return EXIT_RETRIABLE

    def evaluate(self, spec: js.JobSpec, config: Any, root: Path) -> int:
        tasks = eval_tasks(config, self.env)
        result_path = self.paths.out / "result.json"
        result_path.unlink(missing_ok=True)
        self.stage("evaluating")
        self.out.node(f"evaluating the best checkpoint on {tasks} meta-test tasks")
        cmd = [sys.executable, "-m", "leo_core.evaluate", "--config", str(self.paths.experiment_file),
               "--data-root", str(root), "--checkpoint", str(self.paths.out), "--which", "best",
               "--tasks", str(tasks), "--json", str(result_path),
               "--device", DEVICES[spec.accelerator]]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.child_env(), cwd=self.paths.work)
        self.msrun = proc  # a signal stops it the same way
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not _NOISE.match(raw) and self.relay is not None:
                self.relay.write_line(0, raw.decode("utf-8", errors="replace").rstrip())
        code = proc.wait()
        if self.terminating.is_set():
            return EXIT_TERMINATED
        if code != 0 or not result_path.is_file():
            self.out.node(f"evaluation failed with exit code {code}")
            return js.EXIT_BAD_CONFIG if code == js.EXIT_BAD_CONFIG else EXIT_RETRIABLE
        result = json.loads(result_path.read_text())
        result["job"] = spec.name
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        if self.publisher is not None:
            self.publisher.put_json("result.json", result)
        self.out.node(f"meta-test accuracy {100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}% "
                      f"over {result['tasks']} tasks (checkpoint step {result.get('step')})")
        return 0


def main(argv: list[str] | None = None) -> int:
    if argv:
        print("usage: python -m launcher.bootstrap (configured by the job's ConfigMap and "
              "LEO_* variables; see the module docstring)", file=sys.stderr)
        return js.EXIT_BAD_CONFIG
    boot = Bootstrap()
    previous = {sig: signal.signal(sig, boot.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return boot.run()
    except Terminated:
        return EXIT_TERMINATED
    except UsageError as err:  # BadConfig, bad JobSpec, bad rank table, ...
        boot.out.node(f"error: {err} (bad configuration: not retrying)")
        return js.EXIT_BAD_CONFIG
    except Exception as err:  # noqa: BLE001 - the exit code tells the Job to retry
        if boot.terminating.is_set():
            return EXIT_TERMINATED
        from leo_core.config import ConfigError

        if isinstance(err, ConfigError):
            boot.out.node(f"error: {err} (bad configuration: not retrying)")
            return js.EXIT_BAD_CONFIG
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        boot.out.node(f"error: {text} (retriable)")
        if boot.env.get("LEO_DEBUG"):
            import traceback

            traceback.print_exc()
        return EXIT_RETRIABLE
    finally:
        boot.stop_training()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    if ABANDONED_PUBLICATION.is_set():  # interpreter shutdown would join its upload threads
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
