"""Build the project's CPU image with Debian's podman, offline from any container registry.

    image = build_cpu_image()      # "localhost/leo-launch:cpu-test", built or taken from cache

No registry is reachable here, so the base image cannot be pulled. A stand-in for
`python:3.11-slim-bookworm` is made from Debian packages (`debootstrap --variant=minbase`,
python3.11 + venv + pip, `python`/`python3`/`pip` in /usr/local/bin as the official image has
them) and handed to the Dockerfile through its `PYTHON_IMAGE` build argument.

What this machine needs (measured, see /work/shared/design/TESTING.md, "Container images"):
- runc, not crun ("cgroups in hybrid mode not supported"), and `default_ulimits` (raising
  rlimits is forbidden): both in a containers.conf this module owns (`CONTAINERS_CONF`),
  never in /etc;
- `--format docker`, or podman's OCI default drops `SHELL [...]`;
- pip inside the build does not trust this machine's TLS chain: the host downloads the
  wheels (`pip download`, with its own trust) into a wheelhouse, which the build mounts
  read-only; the build argument `PIP_CONFIG_FILE` (empty by default: no effect) points
  pip at the wheelhouse's pip.conf (`no-index`). The image keeps nothing of it.

Caches, reused between runs on one machine (`LEO_IMAGE_CACHE`, default
~/.cache/leo-launch-images): the stand-in base (a podman image), the wheelhouse, and
podman's own layer cache (unchanged layers are not rebuilt).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from tests.netguard import OPT_OUT

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/leo-standin/python:3.11-slim-bookworm"
CPU_IMAGE = "localhost/leo-launch:cpu-test"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
WHEELHOUSE_MOUNT = "/leo-wheelhouse"
# Debian's python3.11 is 3.11.2; the official slim image's interpreter lives in /usr/local.
BASE_PACKAGES = "python3.11,python3.11-venv,python3-pip,ca-certificates"
CONTAINERS_CONF = """\
# Owned by tests/podman_images.py: this host's cgroup layout needs runc, and its
# containers may not raise rlimits, so podman must not ask for more than the host has.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


class ImageError(RuntimeError):
    """The image could not be built (the message says which step)."""


def cache_dir() -> Path:
    path = Path(os.environ.get("LEO_IMAGE_CACHE") or Path.home() / ".cache" / "leo-launch-images")
    path.mkdir(parents=True, exist_ok=True)
    return path


def missing_tools() -> list[str]:
    return [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]


def podman_env() -> dict[str, str]:
    conf = cache_dir() / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True,
                            timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:3])} … failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def standin_base() -> str:
    """The stand-in for python:3.11-slim-bookworm, made once per machine (about 2 min)."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    with tempfile.TemporaryDirectory(prefix="leo-standin-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
              str(rootfs), DEBIAN_MIRROR], timeout=1200)
        for name, target in (("python", "/usr/bin/python3.11"), ("python3", "/usr/bin/python3.11"),
                             ("pip", "/usr/bin/pip3")):
            link = rootfs / "usr/local/bin" / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        # the official image's apt lists are empty too; the Dockerfile runs apt-get update
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            podman("import", "--change", "CMD [\"python3\"]", "--change",
                   "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "-", BASE_IMAGE, stdin=tar.stdout, timeout=600)
        finally:
            tar.stdout.close()
            tar.wait()
    return BASE_IMAGE


def wheelhouse() -> Path:
    """MindSpore, NumPy and the project's dependencies as wheels the host downloaded (once)."""
    house = cache_dir() / "wheelhouse"
    house.mkdir(exist_ok=True)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # what the Dockerfile installs by name, the project's dependencies, and its build backend
    requirements = [f"mindspore=={_arg('MINDSPORE_VERSION')}", f"numpy=={_arg('NUMPY_VERSION')}",
                    *project["project"]["dependencies"], *project["build-system"]["requires"], "wheel"]
    # Linux x86-64 / CPython 3.11 wheels, what the stand-in base runs. This pip must reach
    # the package index: the one subprocess the test network guard lets out (tests/netguard).
    # debootstrap needs no exemption: it is not Python, and its chroot cannot see the guard.
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(house),
          "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
          "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
          "--platform", "linux_x86_64", "--implementation", "cp", *requirements], timeout=1800,
         env={**os.environ, "PIP_CONSTRAINT": "", OPT_OUT: "off"})
    (house / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {WHEELHOUSE_MOUNT}\n")
    return house


def build_cpu_image(tag: str = CPU_IMAGE) -> tuple[str, float]:
    """Build images/cpu/Dockerfile as `make image-cpu` does, from the stand-in base and the
    wheelhouse; returns the tag and the build's wall time in seconds."""
    base, house = standin_base(), wheelhouse()
    start = time.monotonic()
    podman("build", "--format", "docker", "-f", "images/cpu/Dockerfile", "-t", tag,
           "--build-arg", f"PYTHON_IMAGE={base}",
           "--build-arg", f"PIP_CONFIG_FILE={WHEELHOUSE_MOUNT}/pip.conf",
           "--volume", f"{house}:{WHEELHOUSE_MOUNT}:ro", ".", cwd=ROOT, timeout=2400)
    return tag, time.monotonic() - start


def _arg(name: str) -> str:
    """A build argument's default in images/cpu/Dockerfile."""
    for line in (ROOT / "images/cpu/Dockerfile").read_text().splitlines():
        if line.startswith(f"ARG {name}="):
            return line.split("=", 1)[1]
    raise ImageError(f"images/cpu/Dockerfile has no ARG {name}")


def _run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise ImageError(f"{argv[0]} {argv[1]} … failed ({result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


if __name__ == "__main__":  # build by hand: python -m tests.podman_images
    print(*build_cpu_image())
