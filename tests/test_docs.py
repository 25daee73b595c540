"""Every command block of every README.md runs as written, or says in the Markdown why it
cannot run here (issue 29).

A fenced block labelled sh, bash, shell, console or nothing is a command block. The line
just before it must be one marker:

    <!-- doc-test: run -->
    <!-- doc-test: run; replace "--steps 300" with "--steps 2"; expect "Succeeded"; exit 2 -->
    <!-- doc-test: skip — needs a Docker engine -->

`run` blocks of one README run in order with `bash -e`, in one scratch folder (its state
carries from block to block, as a reader's shell would), with this venv first on PATH, a
real S3 server (SeaweedFS, bucket `bkt`) as the only AWS endpoint, no kubeconfig (so
`--backend auto` means this machine) and local jobs under the scratch folder. `replace`
fills in a placeholder or shortens a run; `expect` text must appear in the block's output;
`exit` is the expected exit code (default 0); `each` runs every command of the block on
its own, e.g. a cluster command that must get past argument parsing (exit 2) and stop at
"no cluster" (exit 1), which checks its flags. Blocks that are not commands are labelled
`text`, `yaml`, `json`, ... and are not run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from launcher.spec.contract import SECRET_KEYS
from launcher.util.s3server import free_ports

ROOT = Path(__file__).resolve().parent.parent
SHELL_LABELS = {"", "sh", "bash", "shell", "console"}
MARKER = re.compile(r"^<!--\s*doc-test:\s*(?P<body>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+)\s*(?P<label>[\w+-]*)\s*$")
# READMEs another engineer owns and this branch may not edit: their command blocks are
# counted, so a new one cannot slip in unmarked; the owner adds the markers.
OWNED_ELSEWHERE: dict[str, int] = {}  # README -> unmarked blocks allowed (none now)
BLOCK_TIMEOUT = 600


@dataclass
class Block:
    readme: str
    line: int  # 1-based line of the opening fence
    label: str
    code: str
    marker: str | None
    replace: list[tuple[str, str]] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)
    exit: int = 0
    each: bool = False  # run every command on its own (each must exit `exit`)

    @property
    def where(self) -> str:
        return f"{self.readme}:{self.line}"


def readmes() -> list[str]:
    """The repository's README.md files (git's view; without git, every one outside dot folders)."""
    found = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                            "*README.md"], cwd=ROOT, capture_output=True, text=True)
    if found.returncode == 0:
        names = found.stdout.split()
    else:
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("README.md")
                 if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return sorted(name for name in names if Path(name).name == "README.md")


def parse_marker(block: Block) -> None:
    """Fill in the run options of a `run` marker; raise ValueError on anything else."""
    body = block.marker or ""
    if body.startswith("skip"):
        reason = body[4:].strip(" —-:")
        if len(reason.split()) < 2:
            raise ValueError(f"{block.where}: a skip marker needs its reason")
        return
    parts = [p.strip() for p in re.findall(r'(?:[^;"]|"[^"]*")+', body)]  # ; outside quotes
    if parts[0] != "run":
        raise ValueError(f"{block.where}: unknown doc-test marker {body!r}")
    for part in parts[1:]:
        if m := re.fullmatch(r'replace "(.*?)" with "(.*?)"', part):
            if m[1] not in block.code:
                raise ValueError(f"{block.where}: replace {m[1]!r}: not in the block")
            block.replace.append((m[1], m[2]))
        elif m := re.fullmatch(r'expect "(.*?)"', part):
            block.expect.append(m[1])
        elif m := re.fullmatch(r"exit (\d+)", part):
            block.exit = int(m[1])
        elif part == "each":
            block.each = True
        else:
            raise ValueError(f"{block.where}: unknown doc-test option {part!r}")


def blocks_of(readme: str) -> list[Block]:
    lines = (ROOT / readme).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == m["fence"])
        if m["label"] in SHELL_LABELS:
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARKER.match(prev.strip())
            out.append(Block(readme, i + 1, m["label"], "\n".join(lines[i + 1:end]) + "\n",
                             mark["body"] if mark else None))
        i = end + 1
    return out


def test_every_command_block_is_run_or_marked():
    problems = []
    for readme in readmes():
        blocks = blocks_of(readme)
        unmarked = [b for b in blocks if b.marker is None]
        if readme in OWNED_ELSEWHERE:
            if len(unmarked) != OWNED_ELSEWHERE[readme]:
                problems.append(f"{readme}: {len(unmarked)} unmarked command blocks, expected "
                                f"{OWNED_ELSEWHERE[readme]}: mark them (<!-- doc-test: ... -->)")
            continue
        problems += [f"{b.where}: command block with no <!-- doc-test: run|skip — why --> before it"
                     for b in unmarked]
        for b in blocks:
            if b.marker is not None:
                try:
                    parse_marker(b)
                except ValueError as err:
                    problems.append(str(err))
        text = (ROOT / readme).read_text()
        stale = len(re.findall(r"^<!--\s*doc-test:", text, re.M)) - sum(b.marker is not None for b in blocks)
        if stale:
            problems.append(f"{readme}: {stale} doc-test marker(s) not directly before a command block")
    assert not problems, "\n".join(problems)


def test_the_storage_secret_command_names_the_keys_pods_read():
    """The walk-through's `kubectl create secret` cannot run here: its keys are checked."""
    text = (ROOT / "README.md").read_text()
    command = re.search(r"kubectl .*?create secret generic .*?```", text, re.S)
    assert command, "README.md: no `kubectl create secret generic` command"
    for key in SECRET_KEYS:
        assert f"--from-literal={key}=" in command[0], key


def runnable(readme: str) -> list[Block]:
    out = []
    for block in blocks_of(readme):
        if block.marker and block.marker.startswith("run"):
            parse_marker(block)
            out.append(block)
    return out


RUNNABLE = [r for r in readmes() if r not in OWNED_ELSEWHERE
            and any((b.marker or "").startswith("run") for b in blocks_of(r))]


@pytest.fixture
def doc_env(s3_env, tmp_path):
    """What a reader's shell has: this venv's tools, S3 at the test server, no cluster."""
    client = s3_env.client()
    if "bkt" not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        s3_env.create_bucket("bkt")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AWS_", "OBS_", "LEO_", "KUBE", "XDG_"))}
    env.update(s3_env.env())
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", HOME=str(tmp_path),
               XDG_STATE_HOME=str(tmp_path / "state"), KUBECONFIG=str(tmp_path / "no-kubeconfig"),
               AWS_ENDPOINT_URL=s3_env.endpoint, DOC_REPO=str(ROOT),
               DOC_PORT=str(free_ports(1)[0]))  # for msrun: other suites on this machine use ports too
    yield env
    # A block that fails may leave a local job running: stop every one.
    listed = subprocess.run(["leo-launch", "list", "-o", "json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    for job in json.loads(listed.stdout or "[]"):
        subprocess.run(["leo-launch", "cancel", job["name"], "--backend", "local"], env=env,
                       cwd=tmp_path, capture_output=True)


@pytest.mark.integration
@pytest.mark.parametrize("readme", RUNNABLE)
def test_readme_commands_run_as_written(readme, doc_env, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for block in runnable(readme):
        code = block.code
        for old, new in block.replace:
            code = code.replace(old, new)
        for command in commands(code) if block.each else [code]:
            run_block(block, command, work, doc_env)


def commands(code: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments and blank lines dropped."""
    lines = code.replace("\\\n", " ").splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def run_block(block: Block, code: str, work: Path, doc_env: dict[str, str]) -> None:
    try:
        proc = subprocess.run(["bash", "-e", "-c", code], cwd=work, env=doc_env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: still running after {BLOCK_TIMEOUT} s:\n{code}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == block.exit, (
        f"{block.where}: exit {proc.returncode}, expected {block.exit}:\n{code}\n--- output:\n{output[-4000:]}")
    for text in block.expect:
        assert text in output, f"{block.where}: {text!r} not in the output:\n{output[-4000:]}"


def test_status_json_keys_are_documented_as_they_are_printed():
    """launcher/README.md names the keys `status -o json` always prints and those it prints
    only when known (issue 29: `reason` was documented as always there)."""
    import dataclasses

    from launcher.backends.base import _ALWAYS, JobStatus

    text = " ".join((ROOT / "launcher/README.md").read_text().split())
    always, sometimes = re.search(r"`status -o json` prints one object with the keys (.*?) always, "
                                  r"and these only when known: (.*?); `list -o json`", text).groups()
    named = lambda part: set(re.findall(r"`(\w+)`", part))  # noqa: E731
    assert named(always) == set(_ALWAYS)
    assert named(sometimes) == {f.name for f in dataclasses.fields(JobStatus)} - set(_ALWAYS)
