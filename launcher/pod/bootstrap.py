"""The bootstrap of one node of a job: `python -m launcher.bootstrap`.

It is the training images' entrypoint (every pod runs it) and what the local backend
runs on this machine. In order:

1. reads the resolved job (`job.yaml`, `experiment.yaml`) from `$LEO_CONFIG_DIR`
   (default /etc/leo-launch, where the job's ConfigMap is mounted) and finds this node's
   rank (`LEO_NODE_RANK`, `JOB_COMPLETION_INDEX`, `VC_TASK_INDEX`, `MS_NODE_RANK`; with an
   inventory, the node's place in it). In an AscendJob the ascend-operator's variables
   decide the role: the Scheduler pod (`MS_ROLE=MS_SCHED`) runs only MindSpore's scheduler
   role (the training script in that role, as msrun runs it on its master; no data, no
   outputs) and exits when the workers are done; Worker pods (`MS_ROLE=MS_WORKER`) do
   what follows with msrun's master = `MS_SCHED_HOST:MS_SCHED_PORT` (the operator's
   Service: not a local address, so msrun starts no scheduler of its own) and node rank
   `MS_NODE_RANK`, after checking `MS_WORKER_NUM`/`MS_LOCAL_WORKER` against the job;
2. stages `data_url` into `$LEO_CACHE_DIR` (default /cache) once per node;
3. brings `train_url`'s latest checkpoint (and metrics, and this node's earlier logs)
   into the local output directory, so training resumes where the job stopped;
4. Ascend: prepares the HCCL rank table (dynamic rendezvous, hccl-controller or
   ascend-operator, the ConfigMap's file, or none); NVIDIA/CPU: msrun's dynamic cluster needs only the master address;
5. runs `msrun --join True ... leo_core/train.py --config experiment.yaml --resume ...`
   (with `--profile <work>/profile --profile-steps N` when the job has `profile_steps`)
   and prints every worker's lines on stdout as `[rank R] line` (its own as `[node K] ...`),
   keeping them in `logs/rank-R.log`; a job of world size 1 runs `python leo_core/train.py
   ...` directly, with the variables msrun would give its only worker (no cluster to form);
6. publishes checkpoints, metrics and logs to `<train_url>/<job>/` while training
   (node 0: everything; other nodes: their ranks' logs), every `$LEO_PUBLISH_INTERVAL`
   seconds (default 30); every node also its ranks' profiles (`profile/rank-<r>/`), a
   failure there being a warning only;
7. node 0 then evaluates the best checkpoint on meta-test (50 × metatest_batch_size
   tasks, 10,000 by default; `$LEO_EVAL_TASKS` overrides) into `result.json`, publishes it
   and the rest, and exits.

Exit codes (the Job's podFailurePolicy and Volcano's policies read them):
0 done; 2 bad configuration (`EXIT_BAD_CONFIG`: unreadable job, bad experiment, missing
data, a worker that exited 2) — retrying cannot help; 1 anything else (retriable: a dead
peer, storage trouble, ...); 143 terminated by SIGTERM (after a last publication).

With arguments (`--data_url=obs://… --train_url=obs://…`, ModelArts' convention) the
bootstrap builds a one-node job from them instead of reading a ConfigMap: see
launcher.pod.modelarts.

Variables for the local backend (pods need none of them): `LEO_WORK_DIR` (outputs, logs;
default `$LEO_CACHE_DIR/job`), `LEO_MASTER_ADDR` / `LEO_MASTER_PORT` (override the
job's), `LEO_STATUS_FILE` (the bootstrap writes its stage there as JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from launcher.errors import UsageError
from launcher.outputs.checkpoints import resume_from_remote
from launcher.outputs.layout import PROFILE_DIR, RESULT_FILE, rank_log
from launcher.outputs.publish import Publisher
from launcher.pod.logrelay import NOISE, LogRelay, Output
from launcher.pod.modelarts import prepare
from launcher.pod.node import (
    BadConfig,
    Terminated,
    check_data_root,
    eval_tasks,
    load_job,
    log_every,
    node_rank_of,
    operator_cluster,
    paths_from_env,
    prepare_rank_table,
    resolve_master,
    scheduler_launch,
)
from launcher.pod.rendezvous import FragmentRendezvous
from launcher.pod.stage import (
    BadData,
    check_space,
    find_data_root,
    stage,
)
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec.contract import (
    ENV_PROCESS_MARK,
    ENV_PUBLISH_INTERVAL,
    ENV_STATUS_FILE,
    EXIT_RETRIABLE,
    EXIT_TERMINATED,
)
from launcher.storage import (
    NotFoundError,
    StorageError,
    download,
    open_store,
    parse_url,
)
from launcher.util.files import atomic_write
from launcher.util.procs import kill_marked, kill_processes

DEFAULT_PUBLISH_INTERVAL = 30.0
FAILED_PUBLISH_TIMEOUT = 20.0  # seconds for the last publication after a failed run
# set when a last publication was given up: its upload threads must not delay the exit
ABANDONED_PUBLICATION = threading.Event()
DEVICES = {"cpu": "CPU", "nvidia": "GPU", "ascend": "Ascend"}
# The bootstrap's start (Unix seconds): leo_core.train logs its first step's time from it.
ENV_START_TIME = "LEO_START_TIME"
# MindSpore's graph compile cache of the training processes (leo_core.compile_cache): under
# the cache dir, which outlives a container restart (/cache is the pod's emptyDir).
ENV_COMPILE_CACHE = "LEO_COMPILE_CACHE"
COMPILE_CACHE_DIR = "compile-cache"

# MindSpore's CPU kernel threads (leo_core.model.configure_runtime): sized to the container's
# CPU limit unless set. Its default pool oversubscribes a limited or shared CPU: on 2 busy
# cores (load ~6) 1 thread took mini_1shot's step from 98 to 41 ms (`make bench-core`).
ENV_MS_THREADS = "LEO_MS_THREADS"
# What msrun gives the only worker of a one-process launch (leo_core.distributed, and the
# local backend's workers_by_rank, read them); with one worker nothing calls init().
SINGLE_WORKER_ENV = {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "1", "MS_NODE_ID": "0",
                     "RANK_ID": "0", "RANK_SIZE": "1", "DEVICE_ID": "0"}
CPU_MAX_FILE = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def cpu_limit(path: Path | None = None) -> int | None:
    """The container's CPU limit rounded up to whole cores, None when unlimited or unknown."""
    try:
        quota, period = (path or CPU_MAX_FILE).read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


# msrun variables that must not leak into a launch from the caller's environment
# (the ascend-operator's too: msrun gets them as arguments and sets its own)
_INHERITED = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM", "MS_NODE_ID",
              "MS_LOCAL_WORKER", "MS_NODE_RANK", "MS_SERVER_NUM",
              "RANK_ID", "RANK_SIZE", "DEVICE_ID", ENV_PROCESS_MARK)
# MindSpore's C++ INFO/DEBUG lines: dropped (GLOG_v=2 should keep them away anyway)
_ERROR_CODE = re.compile(r"exit with exception\. Error code: (-?\d+)")


class Bootstrap:
    """One run of the bootstrap (see the module docstring)."""

    def __init__(self, environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> None:
        self.started = time.time()  # start-up is timed from here (leo_core.train logs it)
        self.env = dict(os.environ if environ is None else environ)
        self.out = Output(stream)
        self.paths = paths_from_env(self.env)
        self.mark = uuid.uuid4().hex
        self.terminating = threading.Event()
        self.msrun: subprocess.Popen | None = None  # msrun, the only worker or the evaluation
        self.worker_codes: list[int] = []
        self.publisher: Any = None
        self.relay: LogRelay | None = None
        self._status_file = self.env.get(ENV_STATUS_FILE)

    # -------------------------------------------------------------- helpers
    def stage(self, name: str, **extra: Any) -> None:
        if not self._status_file:
            return
        data = json.dumps({"stage": name, "time": time.time(), "pid": os.getpid(), **extra})
        try:
            atomic_write(self._status_file, data)
        except OSError:
            pass  # the stage is for `status` only: never fail the job over it

    def storage_options(self, spec: js.JobSpec) -> Any:
        return spec.storage.options(progress=False)

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
        env[ENV_START_TIME] = f"{self.started:.3f}"
        return env

    def worker_env(self, workers: int) -> dict[str, str]:
        """child_env, with MindSpore's kernel threads sharing the CPU limit among `workers`."""
        env = self.child_env()
        if not env.get(ENV_MS_THREADS) and (cores := cpu_limit()) is not None:
            env[ENV_MS_THREADS] = str(max(1, cores // workers))
        return env

    # -------------------------------------------------------------- steps
    def run(self) -> int:
        spec, config = load_job(self.paths)
        cluster = operator_cluster(spec, self.env)  # AscendJob: the ascend-operator's variables
        if cluster is not None and cluster.role == contract.ASCENDJOB_SCHEDULER:
            return self.run_scheduler(spec, cluster)
        node_rank = node_rank_of(spec, self.env)
        self.out.node_rank = node_rank
        port = str(cluster.sched_port) if cluster else self.env.get(contract.ENV_MASTER_PORT, "").strip()
        if port and port != str(spec.master_port):
            try:
                spec = dataclasses.replace(spec, master_port=int(port))
            except ValueError as err:
                raise BadConfig(f"{contract.ENV_MASTER_PORT}={port!r} is not a port") from err
        if spec.data_url is None:
            raise BadConfig("the job has no data_url: submit it with --data-url")
        try:  # before any work: the check render/submit made, with this pod's environment
            spec.check_reachable(self.env)
        except UsageError as err:
            raise BadConfig(str(err)) from err
        local_ranks = list(range(node_rank * spec.cards_per_node, (node_rank + 1) * spec.cards_per_node))
        self.out.node(f"job {spec.name}: {spec.experiment}, node {node_rank} of {spec.nodes}, "
                      f"ranks {local_ranks[0]}-{local_ranks[-1]} of {spec.world_size} on {spec.accelerator}")
        for path in (self.paths.out, self.paths.logs, self.paths.cache):
            path.mkdir(parents=True, exist_ok=True)
        # an earlier attempt's profile is not this one's (the publisher mirrors what is there)
        shutil.rmtree(self.paths.profile, ignore_errors=True)
        job_url = None
        if spec.train_url:
            job_url = str(parse_url(spec.train_url).child(spec.name))

        root = self.stage_data(spec, config)
        init = self.stage_init(spec)
        resumed = self.resume(spec, job_url, local_ranks)
        self.stage("preparing")
        addr = self.env.get(contract.ENV_MASTER_ADDR) or spec.master_addr
        if spec.world_size == 1:  # one process forms no cluster: no master to wait for
            master_ip = "127.0.0.1"
        elif cluster is not None:  # the operator's scheduler, behind its Service
            master_ip = resolve_master(cluster.sched_host, spec.cluster_timeout)
        elif node_rank == 0 and self.env.get("POD_IP"):
            master_ip = self.env["POD_IP"]  # our own address: no need to wait for DNS
        else:
            master_ip = resolve_master(addr, spec.cluster_timeout)
        server = None
        code: int | None = None
        if spec.accelerator == "ascend" and spec.rank_table == "dynamic" and node_rank == 0:
            server = FragmentRendezvous(spec.name, spec.nodes, port=spec.ranktable_port,
                                        timeout=spec.cluster_timeout).start()
        try:
            table = prepare_rank_table(spec, node_rank, self.env, master_ip, self.out,
                                       config_dir=self.paths.config_dir)
            if job_url:
                self.start_publishing(spec, job_url, node_rank)
            code = self.train(spec, config, node_rank, local_ranks, master_ip, table, root, resumed, init)
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

    def run_scheduler(self, spec: js.JobSpec, cluster: Any) -> int:
        """An AscendJob's Scheduler pod: MindSpore's scheduler role only (no data, no
        training, no outputs); it ends when the workers are done."""
        self.out.node_rank = contract.ASCENDJOB_SCHEDULER
        self.paths.work.mkdir(parents=True, exist_ok=True)
        # CPU: the scheduler role touches no device, and this pod has no NPUs or driver mount
        cmd, env = scheduler_launch(spec, cluster, self.paths, self.child_env(), python=sys.executable,
                                    device="CPU")
        self.stage("scheduling")
        self.out.node(f"job {spec.name}: MindSpore scheduler of {cluster.worker_num} worker process(es) on "
                      f"{spec.nodes} node(s) at {cluster.sched_host}:{cluster.sched_port} (ascend-operator)")
        self.msrun = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=self.paths.work,
                                      start_new_session=True)
        if self.terminating.is_set():
            self.stop_training()
        assert self.msrun.stdout is not None
        for raw in self.msrun.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line and not NOISE.match(raw):
                self.out.node(line)
        code = self.msrun.wait()
        if self.terminating.is_set():
            return EXIT_TERMINATED
        if code != 0:
            self.out.failure(f"the MindSpore scheduler exited with {code}")
            return EXIT_RETRIABLE
        self.stage("done")
        self.out.node("done: the workers have finished")
        return 0

    def stage_data(self, spec: js.JobSpec, config: Any) -> Path:
        url = parse_url(spec.data_url)
        if url.is_local:  # a directory used in place: what it lacks will not appear by retrying
            if not Path(url.path).exists():
                raise BadConfig(f"data_url {url}: no such file or directory")
            if Path(url.path).is_dir():
                try:
                    find_data_root(Path(url.path))
                except StorageError as err:
                    raise BadConfig(f"data_url: {err}") from err
        self.stage("staging")
        self.out.node(f"staging {spec.data_url} into {self.paths.cache}")
        started = time.monotonic()
        try:
            root = stage(spec.data_url, self.paths.cache, options=self.storage_options(spec),
                         limit=self.cache_limit(spec))
        except (NotFoundError, BadData) as err:  # retrying cannot help
            raise BadConfig(f"data_url: {err}") from err
        check_data_root(root, config)
        self.out.node(f"data ready in {root} ({time.monotonic() - started:.1f} s)")
        return root

    def cache_limit(self, spec: js.JobSpec) -> int | None:
        """The pod's /cache sizeLimit in bytes (None for a local job: no emptyDir)."""
        if self.env.get(contract.ENV_LOCAL_JOB):
            return None
        from launcher.spec import disk, names

        return int(names.parse_quantity(disk.pod_disk(spec)[0]))

    def stage_init(self, spec: js.JobSpec) -> Path | None:
        """The job's initial weights (`--init URL`) as a local file: a local path is used in
        place, an object is downloaded (verified) into the cache once per attempt."""
        if not spec.init_url:
            return None

        url = parse_url(spec.init_url)
        if url.is_local:
            if not Path(url.path).is_file():
                raise BadConfig(f"init_url {url}: no such file")
            return Path(url.path)
        dest = self.paths.cache / "init" / url.name
        self.out.node(f"fetching the initial weights {spec.init_url}")
        try:
            with open_store(url.parent(), self.storage_options(spec)) as store:
                info = store.stat(url.name)
            if info is not None:
                dest.parent.mkdir(parents=True, exist_ok=True)
                check_space(info.size, self.paths.cache, self.cache_limit(spec), str(url))
            download(url, dest, options=self.storage_options(spec))
        except (NotFoundError, BadData) as err:
            raise BadConfig(f"init_url: {err}") from err
        return dest

    def resume(self, spec: js.JobSpec, job_url: str | None, local_ranks: list[int]) -> int | None:
        if not job_url:
            return None

        self.stage("resuming")
        previous = self.paths.previous_logs
        step = resume_from_remote(job_url, self.paths.out, logs_dir=previous,
                                  options=self.storage_options(spec))
        for rank in local_ranks:  # only this node's ranks: others publish their own
            src, dest = previous / rank_log(rank), self.paths.logs / rank_log(rank)
            if src.is_file() and not dest.exists():
                os.replace(src, dest)
        shutil.rmtree(previous, ignore_errors=True)
        if step is not None:
            self.out.node(f"resuming from the checkpoint of step {step} in {job_url}")
        return step

    def start_publishing(self, spec: js.JobSpec, job_url: str, node_rank: int) -> None:
        interval = self.env.get(ENV_PUBLISH_INTERVAL, "").strip()
        try:
            seconds = float(interval) if interval else DEFAULT_PUBLISH_INTERVAL
        except ValueError as err:
            raise BadConfig(f"{ENV_PUBLISH_INTERVAL}={interval!r} is not a number of seconds") from err
        out_dir = self.paths.out if node_rank == 0 else self.paths.nothing
        out_dir.mkdir(parents=True, exist_ok=True)
        self.publisher = Publisher(out_dir, job_url, logs_dir=self.paths.logs,
                                   profile_dir=self.paths.profile if spec.profile_steps else None,
                                   options=self.storage_options(spec), keep=spec.keep_checkpoints)
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
        reports: list[Any] = []

        def last() -> None:
            try:
                reports.append(publisher.final())
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
        for warning in reports[0].warnings if reports else ():
            self.out.node(f"warning: {warning}")
        if publisher.profile_ranks:
            ranks = ", ".join(str(r) for r in sorted(publisher.profile_ranks))
            self.out.node(f"profile of rank(s) {ranks} published to {publisher.url}/{PROFILE_DIR}/")
        publisher.close()

    def train(self, spec: js.JobSpec, config: Any, node_rank: int, local_ranks: list[int],
              master_ip: str, table: str | None, root: Path, resumed: int | None,
              init: Path | None = None) -> int:
        import importlib.util

        script = importlib.util.find_spec("leo_core.train").origin
        msrun_dir = self.paths.msrun_logs
        shutil.rmtree(msrun_dir, ignore_errors=True)
        msrun_dir.mkdir(parents=True)
        args = [script, "--config", str(self.paths.experiment_file), "--data-root", str(root),
                "--out", str(self.paths.out), "--resume", "--device", DEVICES[spec.accelerator],
                "--log-every", str(log_every(config)), "--seed", str(spec.seed)]
        if init is not None:  # train.py uses it only when there is no checkpoint to resume
            args += ["--init", str(init)]
        if spec.profile_steps:  # every rank writes <profile>/rank-<r>/
            args += ["--profile", str(self.paths.profile), "--profile-steps", str(spec.profile_steps)]
        env = self.worker_env(spec.cards_per_node)
        env[ENV_COMPILE_CACHE] = str(self.paths.cache / COMPILE_CACHE_DIR)
        if table:
            env["RANK_TABLE_FILE"] = table
        self.stage("training", resumed_step=resumed)
        self.relay = LogRelay(msrun_dir, local_ranks, self.paths.logs, self.out)
        self.relay.start()
        try:
            if spec.world_size == 1:
                code = self.run_single(args, env, msrun_dir)
            else:
                self.out.node(f"starting {spec.cards_per_node} training process(es) with msrun "
                              f"(master {master_ip}:{spec.master_port})")
                msrun = Path(sys.executable).parent / "msrun"
                cmd = [str(msrun) if msrun.exists() else "msrun",
                       *spec.msrun_args(node_rank, log_dir=str(msrun_dir), master_addr=master_ip,
                                        rank_table_file=table),
                       # an id no worker has: msrun's own tailing off, we relay with rank tags
                       "--tail_worker_log", str(spec.world_size), *args]
                code = self.run_msrun(cmd, env)
        finally:
            self.relay.stop()
            kill_marked(ENV_PROCESS_MARK, self.mark, exclude={os.getpid()})  # no stragglers
        if self.terminating.is_set():
            return EXIT_TERMINATED
        if code == 0:
            return 0
        if contract.EXIT_BAD_CONFIG in self.worker_codes:
            self.out.failure(f"training failed: a worker exited with code {contract.EXIT_BAD_CONFIG} "
                          "(bad configuration or data); not retrying")
            return contract.EXIT_BAD_CONFIG
        codes = ", ".join(str(c) for c in self.worker_codes) or "none reported"
        what = "the training process" if spec.world_size == 1 else "msrun"
        self.out.failure(f"training failed: {what} exited with {code} (worker exit codes: {codes})")
        return EXIT_RETRIABLE

    def run_msrun(self, cmd: list[str], env: dict[str, str]) -> int:
        """msrun's run: its own lines relayed as `msrun: ...`, its workers' exit codes noted."""
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
            if "tail_worker_log" in line or NOISE.match(raw) or not line:
                continue
            self.out.node(f"msrun: {line}")
        return self.msrun.wait()

    def run_single(self, args: list[str], env: dict[str, str], log_dir: Path) -> int:
        """World size 1: the training script directly, as msrun's only worker would run (its
        variables, its log file `worker_0.log` that the relay follows, a session of its own)
        but without msrun's own start, its scheduler process and its worker spawn: about
        1 s of start-up on 2 cores (tests/benchmarks/README.md)."""
        env.update(SINGLE_WORKER_ENV)
        self.out.node("starting 1 training process (world size 1: no msrun, no cluster to form)")
        with open(log_dir / "worker_0.log", "wb") as log:
            self.msrun = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=self.paths.work,
                                          start_new_session=True)
        if self.terminating.is_set():  # a signal arrived while starting
            self.stop_training()
        code = self.msrun.wait()
        if code != 0:
            self.worker_codes.append(code)
        return code

    def evaluate(self, spec: js.JobSpec, config: Any, root: Path) -> int:
        tasks = eval_tasks(config, self.env)
        result_path = self.paths.out / RESULT_FILE
        result_path.unlink(missing_ok=True)
        self.stage("evaluating")
        self.out.node(f"evaluating the best checkpoint on {tasks} meta-test tasks")
        cmd = [sys.executable, "-m", "leo_core.evaluate", "--config", str(self.paths.experiment_file),
               "--data-root", str(root), "--checkpoint", str(self.paths.out), "--which", "best",
               "--tasks", str(tasks), "--json", str(result_path),
               "--device", DEVICES[spec.accelerator]]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self.worker_env(1), cwd=self.paths.work)
        self.msrun = proc  # a signal stops it the same way
        assert proc.stdout is not None
        for raw in proc.stdout:
            if not NOISE.match(raw) and self.relay is not None:
                self.relay.write_line(0, raw.decode("utf-8", errors="replace").rstrip())
        code = proc.wait()
        if self.terminating.is_set():
            return EXIT_TERMINATED
        if code != 0 or not result_path.is_file():
            self.out.failure(f"evaluation failed with exit code {code}")
            return contract.EXIT_BAD_CONFIG if code == contract.EXIT_BAD_CONFIG else EXIT_RETRIABLE
        result = json.loads(result_path.read_text())
        result["job"] = spec.name
        result_path.write_text(json.dumps(result, indent=2) + "\n")
        if self.publisher is not None:
            self.publisher.put_json(RESULT_FILE, result)
        self.out.node(f"meta-test accuracy {100 * result['accuracy']:.2f}% ± {100 * result['ci95']:.2f}% "
                      f"over {result['tasks']} tasks (checkpoint step {result.get('step')})"
                      + _baselines_text(result))
        return 0


def _baselines_text(result: dict) -> str:
    baselines = result.get("baselines") if isinstance(result.get("baselines"), dict) else {}
    parts = [f"{label} {100 * b['accuracy']:.2f}%" for key, label in
             (("untrained", "untrained"), ("nearest_class_mean", "nearest-class-mean"))
             if isinstance(b := baselines.get(key), dict) and isinstance(b.get("accuracy"), int | float)]
    return f"; same tasks: {', '.join(parts)}" if parts else ""


def write_termination_message(text: str, environ: Mapping[str, str]) -> None:
    """The failure's one-line reason where the kubelet reads the container's termination
    message (status shows it): $LEO_TERMINATION_LOG, else /dev/termination-log when it
    exists (the kubelet mounts it in every container; never created elsewhere)."""
    path = environ.get(contract.ENV_TERMINATION_LOG) or contract.TERMINATION_LOG
    if not text or (path == contract.TERMINATION_LOG and not os.path.isfile(path)):
        return
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(text[:1000] + "\n")  # the kubelet keeps at most 4 KiB
    except OSError:
        pass  # the exit code still tells the controller


def main(argv: list[str] | None = None) -> int:
    environ = dict(os.environ)
    out = Output()
    code = _main(argv, environ, out)  # its failure lines go to `out`
    if code not in (0, EXIT_TERMINATED):
        write_termination_message(out.reason, environ)
    return code


def _main(argv: list[str] | None, environ: dict[str, str], out: Output) -> int:
    notes: list[str] = []
    if argv:  # the ModelArts-style entry: the job comes from --data_url, --train_url, ...

        try:
            environ, notes = prepare(argv, environ)
        except SystemExit as done:  # --help
            return done.code if isinstance(done.code, int) else 0
        except UsageError as err:
            out.failure(f"error: {err} (bad configuration: not retrying)")
            return contract.EXIT_BAD_CONFIG
    boot = Bootstrap(environ)
    boot.out = out
    if notes:
        boot.out.node_rank = 0  # a ModelArts-style job is one node
    for note in notes:
        boot.out.node(note)
    previous = {sig: signal.signal(sig, boot.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return boot.run()
    except Terminated:
        return EXIT_TERMINATED
    except UsageError as err:  # BadConfig, bad JobSpec, bad rank table, ...
        boot.out.failure(f"error: {err} (bad configuration: not retrying)")
        return contract.EXIT_BAD_CONFIG
    except Exception as err:  # noqa: BLE001 - the exit code tells the Job to retry
        if boot.terminating.is_set():
            return EXIT_TERMINATED
        from leo_core.config import ConfigError

        if isinstance(err, ConfigError):
            boot.out.failure(f"error: {err} (bad configuration: not retrying)")
            return contract.EXIT_BAD_CONFIG
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        boot.out.failure(f"error: {text} (retriable)")
        if boot.env.get("LEO_DEBUG"):
            import traceback

            traceback.print_exc()
        return EXIT_RETRIABLE
    finally:
        boot.stop_training()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_as_program(argv: list[str]) -> None:
    """`python -m launcher.bootstrap`: main(), then exit without joining the upload threads
    of a last publication that was given up (interpreter shutdown would wait for them)."""
    exit_code = main(argv)
    if ABANDONED_PUBLICATION.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)


if __name__ == "__main__":
    run_as_program(sys.argv[1:])
