"""Publication of a job's outputs while it trains: checkpoints (objects, then the
manifest, then the pointer), metrics and logs from the local output directory to
`<train_url>/<job>/`, every few seconds and once more at the end; with `--profile`, the
node's ranks' profiles too (launcher.outputs.profile), last and never at the cost of the
training outputs: a failure there is a warning."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.outputs.checkpoints import _read_local_pointer, build_manifest
from launcher.outputs.layout import (
    CHECKPOINTS_DIR,
    MANIFEST,
    METRICS_FILE,
    POINTERS,
    PROFILE_DIR,
    profile_rank,
    rank_log,
)
from launcher.outputs.profile import MAX_FILE_BYTES, local_profiles
from launcher.storage import get_json, open_store, put_json
from launcher.storage.base import NotFoundError, StorageError, StorageOptions
from launcher.storage.files import local_error
from launcher.storage.sync import sync_files_up

log = logging.getLogger(__name__)
_STEP = re.compile(r"step-(\d+)")


@dataclass
class PublishReport:
    checkpoints: list[str] = field(default_factory=list)  # step dirs uploaded
    pointers: list[str] = field(default_factory=list)  # "latest"/"best" updated
    files: list[str] = field(default_factory=list)  # metrics, logs and profile files mirrored
    warnings: list[str] = field(default_factory=list)  # what was not published (the profile)
    pruned: list[str] = field(default_factory=list)  # step dirs deleted (--keep-checkpoints)


class Publisher:
    """Publishes a training run's output to its job URL from rank 0.

    `poll()` uploads new checkpoints (objects, then MANIFEST.json, then the pointer) and
    mirrors metrics.jsonl and the rank logs when they changed (with `keep`, deleting older
    published steps: see `prune`); call it every N seconds
    (`start(N)` runs it on a thread) and `final()` once at exit. `put_json`/`put_file`
    publish result.json and job.yaml. With `profile_dir`, each rank's profile found there
    is mirrored to profile/rank-<r>/ once complete (by `final()` whatever it holds); its
    failures are `warnings` of the report, never raised. Thread-safe; nothing is printed.
    """

    def __init__(self, out_dir: str | Path, job_url: str, *, logs_dir: str | Path | None = None,
                 profile_dir: str | Path | None = None, options: StorageOptions | None = None,
                 keep: int | None = None) -> None:
        self.out = Path(out_dir)
        self.keep = keep  # --keep-checkpoints: published steps kept (None: all)
        self.logs = Path(logs_dir) if logs_dir is not None else None
        self.profile = Path(profile_dir) if profile_dir is not None else None
        self.profile_ranks: set[int] = set()  # ranks whose profile is published
        self._profile_warned: set[str] = set()
        self.store = open_store(job_url, dataclasses.replace(options or StorageOptions(), progress=False))
        self._lock = threading.Lock()
        self._published: set[str] = set()
        self._pointers: dict[str, bytes] = {}
        self._mirrored: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def url(self) -> str:
        return str(self.store.url)

    def poll(self, *, final: bool = False) -> PublishReport:
        """Publish what changed since the last call. Raises StorageError on failure;
        what was not published is retried by the next call. `final`: also a rank's
        profile that its summary does not mark complete."""
        with self._lock:
            report = PublishReport()
            ckpt = self.out / CHECKPOINTS_DIR
            for which in POINTERS:
                found = _read_local_pointer(ckpt / f"{which}.json")
                if found is None or self._pointers.get(which) == found[1]:
                    continue
                pointer, raw = found
                if self._publish_step(ckpt, pointer["path"], pointer["step"], report):
                    self.store.put_bytes(f"checkpoints/{which}.json", raw)
                    self._pointers[which] = raw
                    report.pointers.append(which)
            if self.keep is not None and report.pointers:
                report.pruned = self.prune()
            self._mirror(self.out / METRICS_FILE, METRICS_FILE, report, whole_lines=True)
            if self.logs is not None and self.logs.is_dir():
                for path in sorted(self.logs.glob(rank_log("*"))):
                    self._mirror(path, f"logs/{path.name}", report)
            if self.profile is not None:
                self._publish_profiles(report, final)
            return report

    def prune(self) -> list[str]:
        """Delete published step folders beyond the `keep` newest complete ones (those with
        a MANIFEST.json), never one that latest.json or best.json points at, and none newer
        than the oldest kept: a step goes only once `keep` newer ones are complete. The
        manifest goes first, so a half-deleted step reads as incomplete. Returns the names."""
        listing = self.store.list(CHECKPOINTS_DIR)
        steps: dict[int, str] = {}
        complete: set[str] = set()
        for key in listing:
            parts = key.split("/")
            match = _STEP.fullmatch(parts[-2]) if len(parts) >= 2 else None
            if match and parts[-3:-1] == [CHECKPOINTS_DIR, parts[-2]]:
                steps[int(match.group(1))] = parts[-2]
                if parts[-1] == MANIFEST:
                    complete.add(parts[-2])
        newest = [n for n in sorted(steps, reverse=True) if steps[n] in complete][:self.keep]
        if len(newest) < (self.keep or 0):
            return []
        pointed = set()
        for which in POINTERS:
            try:
                pointer = get_json(self.store, f"{CHECKPOINTS_DIR}/{which}.json")
            except NotFoundError:
                continue
            if isinstance(pointer, dict):
                pointed.add(str(pointer.get("path")))
        doomed = [steps[n] for n in sorted(steps) if n < newest[-1] and steps[n] not in pointed]
        for name in doomed:
            prefix = f"{CHECKPOINTS_DIR}/{name}/"
            keys = [k for k in listing if k.startswith(prefix)]
            manifest = [k for k in keys if k.endswith("/" + MANIFEST)]
            self.store.delete(manifest)
            self.store.delete([k for k in keys if k not in manifest])
            self._published.discard(name)
        return doomed

    def _publish_profiles(self, report: PublishReport, final: bool) -> None:
        """Mirror each rank's profile files (after everything else: a failure here is a
        warning and leaves the training outputs published)."""
        assert self.profile is not None
        try:
            for profile in local_profiles(self.profile):
                for path in profile.too_large:
                    self._profile_warning(report, f"{path.name} of rank {profile.rank} is over "
                                                  f"{MAX_FILE_BYTES >> 20} MiB: not published")
                if not (profile.complete or final) or not profile.files:
                    continue
                folder = f"{PROFILE_DIR}/{profile_rank(profile.rank)}"
                for name, path in profile.files.items():
                    self._mirror(path, f"{folder}/{name}", report, stream=True)
                self.profile_ranks.add(profile.rank)
        except Exception as err:  # noqa: BLE001 - a profile never fails the publication
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._profile_warning(report, f"the profile was not published: {text}")

    def _publish_step(self, ckpt: Path, name: str, step: int, report: PublishReport) -> bool:
        """Upload one checkpoint directory and then its manifest; False when the
        directory is gone (the trainer keeps only the latest and the best)."""
        if name in self._published:
            return True
        step_dir = ckpt / name
        if not step_dir.is_dir():
            return False
        try:
            manifest = build_manifest(step_dir, step)
        except (OSError, StorageError):
            if not step_dir.is_dir():
                return False
            raise
        manifest_key = f"{CHECKPOINTS_DIR}/{name}/{MANIFEST}"
        try:
            remote = get_json(self.store, manifest_key)
        except NotFoundError:
            remote = None
        if not isinstance(remote, dict) or remote.get("files") != manifest["files"]:
            if remote is not None:  # another run's step of that number: unpublish it first
                self.store.delete([manifest_key])
            files = {f"checkpoints/{name}/{f['name']}": step_dir.joinpath(*f["name"].split("/"))
                     for f in manifest["files"]}
            try:
                sent = sync_files_up(files, self.store, remote=self.store.list(f"checkpoints/{name}"),
                                     label=f"publish {name}")
            except StorageError:
                if not step_dir.is_dir():
                    return False
                raise
            expected = {f"checkpoints/{name}/{f['name']}": f["sha256"] for f in manifest["files"]}
            changed = [key for key, sha in sent.sha256.items() if expected.get(key) != sha]
            if changed:
                log.warning("checkpoint %s changed while it was published; retrying later", name)
                return False
            put_json(self.store, manifest_key, manifest)
            report.checkpoints.append(name)
        self._published.add(name)
        return True

    def _profile_warning(self, report: PublishReport, text: str) -> None:
        report.warnings.append(text)
        if text not in self._profile_warned:  # once, not at every tick
            self._profile_warned.add(text)
            log.warning("%s", text)

    def _mirror(self, path: Path, key: str, report: PublishReport, *, whole_lines: bool = False,
                stream: bool = False) -> None:
        try:
            st = path.stat()
            signature = (st.st_size, st.st_mtime_ns)
            if self._mirrored.get(key) == signature:
                return
            if stream:  # a file too large to hold in memory at once (a profiler trace)
                self.store.put_file(path, key)
                data = None
            else:
                data = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as err:
            raise local_error(err, path) from err
        if data is not None:
            if whole_lines:
                data = data[: data.rfind(b"\n") + 1]
            self.store.put_bytes(key, data)
        self._mirrored[key] = signature
        report.files.append(key)

    def put_json(self, name: str, obj: Any) -> None:
        """Write a small JSON object under the job URL (e.g. result.json)."""
        with self._lock:
            put_json(self.store, name, obj)

    def put_file(self, local: str | Path, name: str) -> None:
        """Upload a file under the job URL (e.g. job.yaml)."""
        with self._lock:
            self.store.put_file(Path(local), name)

    def start(self, interval: float) -> None:
        """Call `poll()` every `interval` seconds on a daemon thread; failures are logged
        (one line, in `last_error` too) and retried at the next tick."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True,
                                        name="leo-publisher")
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
                self.last_error = None
            except Exception as err:  # noqa: BLE001 - the thread must keep going
                self.last_error = str(err).splitlines()[0] if str(err) else type(err).__name__
                log.warning("publishing to %s failed: %s", self.url, self.last_error)

    def stop(self) -> None:
        """Stop the background thread (waits for a poll in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def final(self) -> PublishReport:
        """At exit: stop the thread and publish everything once more (errors raised)."""
        self.stop()
        return self.poll(final=True)

    def close(self) -> None:
        self.stop()
        self.store.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


