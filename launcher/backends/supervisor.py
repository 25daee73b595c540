"""The supervisor of a local job: `python -m launcher.backends.supervisor JOB_DIR`.

It plays the Job controller on this machine: it runs `python -m launcher.bootstrap` (the
pods' entrypoint, the very same code path) with the job's state directory as its config
dir, and when the bootstrap fails with a retriable exit code it starts it again, at most
`--max-restarts` times; the bootstrap resumes from the latest checkpoint. It runs in a
session of its own, so the job survives the CLI (and its terminal) exiting.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher.backends.localjob import (
    OUTPUT_LOG,
    PID_FILE,
    STAGE_FILE,
    STATE_FILE,
    LocalJob,
    free_port,
)
from launcher.spec import contract
from launcher.spec.contract import ENV_LOCAL_JOB, ENV_STATUS_FILE, ENV_WORK_DIR
from launcher.util.files import atomic_write, write_json
from launcher.util.procs import kill_marked


class Supervisor:
    """Runs the bootstrap until it succeeds, fails for good or is cancelled."""

    BOOTSTRAP = ("-m", "launcher.bootstrap")

    def __init__(self, path: Path, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, *self.BOOTSTRAP]
        self.job = LocalJob(path.name, path)
        self.state = self.job.state()
        self.cancelled = False
        self.current: subprocess.Popen | None = None

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        self.state["updated"] = time.time()
        write_json(self.job.path / STATE_FILE, self.state)

    def log(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)

    def on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.cancelled = True
        proc = self.current
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the bootstrap leads its own session
            except OSError:
                pass

    def run(self) -> int:
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self.on_signal) for sig in signals}
        try:
            return self._run()
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            return self._fail_no_space(err)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        # the pid file first: a CLI killed right after starting us has not written it
        atomic_write(self.job.path / PID_FILE, f"{os.getpid()}\n")
        spec = self.job.spec()
        # our own mark (submit set it) even if state.json was damaged meanwhile
        mark = os.environ.get(ENV_LOCAL_JOB) or self.job.mark(self.state)
        work = self.job.work
        attempts = spec.max_restarts + 1
        self.save(supervisor_pid=os.getpid(), started=time.time())
        code = 1
        for attempt in range(attempts):
            if self.cancelled:
                break
            (self.job.path / STAGE_FILE).unlink(missing_ok=True)
            if attempt:
                self.save(phase="Restarting", attempt=attempt)
            else:
                self.save(phase="Pending", reason="starting the bootstrap", attempt=attempt)
            env = dict(os.environ)
            env.update({contract.ENV_CONFIG_DIR: str(self.job.path), contract.ENV_NODE_RANK: "0",
                        contract.ENV_MASTER_ADDR: "127.0.0.1", contract.ENV_MASTER_PORT: str(free_port()),
                        contract.ENV_CACHE_DIR: str(work / "cache"), ENV_WORK_DIR: str(work),
                        ENV_STATUS_FILE: str(self.job.path / STAGE_FILE),
                        "LEO_ATTEMPT": str(attempt)})
            self.log(f"attempt {attempt + 1} of {attempts}: starting the bootstrap")
            with open(self.job.path / OUTPUT_LOG, "ab") as output:
                output.write(f"[node 0] attempt {attempt + 1} of {attempts} "
                             f"({time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode())
                output.flush()
                self.current = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL,
                    stdout=output, stderr=subprocess.STDOUT, env=env, cwd=work,
                    start_new_session=True)
            self.save(bootstrap_pid=self.current.pid)
            if self.cancelled:  # a signal between the check and the start
                self.on_signal(signal.SIGTERM, None)
            code = self.current.wait()
            self.log(f"attempt {attempt + 1}: the bootstrap exited with {code}")
            kill_marked(ENV_LOCAL_JOB, mark, exclude={os.getpid()})  # nothing of it may linger
            if self.cancelled:
                break
            if code == 0:
                self.save(phase="Succeeded", reason=None, exit_code=0, finished=time.time())
                return 0
            if code == contract.EXIT_BAD_CONFIG:
                self.save(phase="Failed", exit_code=code, finished=time.time(),
                          reason="bad configuration (exit code 2, not retried): see leo-launch logs")
                return code
            if attempt + 1 == attempts:
                self.save(phase="Failed", exit_code=code, finished=time.time(),
                          reason=f"failed {attempts} time(s) (--max-restarts {spec.max_restarts}); "
                                 f"last exit code {code}")
                return code
            self.save(restarts=self.state.get("restarts", 0) + 1, last_exit_code=code,
                      reason=f"attempt {attempt + 1} failed with exit code {code}; resuming from "
                             "the latest checkpoint")
        self.save(phase="Failed", reason="cancelled", exit_code=code, finished=time.time())
        return code


    def _fail_no_space(self, err: OSError) -> int:
        """The state folder's disk is full: stop the job and record Failed with the reason,
        rewriting state.json in place (its own block; a new file cannot be created)."""
        self.on_signal(signal.SIGTERM, None)
        mark = os.environ.get(ENV_LOCAL_JOB) or self.job.mark(self.state)
        kill_marked(ENV_LOCAL_JOB, mark, exclude={os.getpid()}, grace=5.0)
        where = os.path.dirname(err.filename) if err.filename else str(self.job.path)
        reason = f"no space left on {where or self.job.path}: free space and submit again"
        self.state.update(phase="Failed", reason=reason, exit_code=1, finished=time.time())
        try:
            with open(self.job.path / STATE_FILE, "r+b") as handle:
                handle.truncate(0)
                handle.write(json.dumps(self.state, indent=1, sort_keys=True).encode() + b"\n")
        except OSError as again:
            print(f"cannot record the failure in {self.job.path / STATE_FILE}: "
                  f"{again.strerror or again}", file=sys.stderr)
        try:
            self.log(f"failed: {reason}")
        except OSError:
            pass
        return 1


def supervise(path: str | Path) -> int:
    return Supervisor(Path(path)).run()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m launcher.backends.supervisor JOB_DIR (started by leo-launch submit)",
              file=sys.stderr)
        return 2
    return supervise(args[0])


if __name__ == "__main__":
    sys.exit(main())
