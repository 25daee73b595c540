"""Storage URLs, options, errors and the Store protocol: one small interface over object
storage and local directories.

URLs: `s3://bucket/prefix`, `obs://bucket/prefix` (Huawei OBS through its S3 API),
`file:///abs/path` and plain paths. A *store* is rooted at a URL; its keys are
'/'-separated paths relative to that root. Both kinds of store offer the same
operations (list, stat, get/put small objects, get/put files, delete), and the
functions of `launcher.storage` (open_store, sync_up, sync_down, push, download,
read_json, write_json, ...) work on any of them.

Endpoint, addressing and retries of object stores (see `StorageOptions`):
- endpoint: `--storage-endpoint`, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else
  the service default: AWS for s3://, `https://obs.<region>.myhuaweicloud.com` for obs://
  with the region from `--storage-region`, `OBS_REGION`, `AWS_REGION` or `AWS_DEFAULT_REGION`;
- addressing: path-style when asked (`--path-style`, `LEO_STORAGE_PATH_STYLE=1`),
  otherwise virtual-hosted for obs:// and botocore's choice for s3://;
- retries: botocore's "standard" mode, `AWS_MAX_ATTEMPTS` (default 5) attempts with
  exponential back-off and jitter on throttling, 5xx and connection errors;
- timeouts: 10 s to connect and 20 s without a byte per attempt, and no retry that could
  end after 60 s from a request's first attempt (`--storage-timeout`,
  `LEO_STORAGE_TIMEOUT`): a server that accepts and never answers fails within a minute;
- request bodies are not hashed into signatures (LEO_STORAGE_SIGN_PAYLOAD=1 to do so):
  the sha256 in every object's metadata is checked on every read instead;
- credentials: boto3's standard chain (variables, profiles, web identity...). They are
  never printed, logged or written anywhere by this code.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from launcher.errors import LaunchError, UsageError

MB = 1024 * 1024
SCHEMES = ("s3", "obs", "file")
DEFAULT_CONCURRENCY = 10
DEFAULT_PART_SIZE = 64 * MB
DEFAULT_MAX_ATTEMPTS = 5
# A request that gets no answer is given up after this many seconds, retries included
# (--storage-timeout, LEO_STORAGE_TIMEOUT); each attempt waits at most CONNECT/READ.
DEFAULT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 20.0
MAX_TIMEOUT = 86400.0
# Temporary files of downloads and atomic writes start with this; listings skip them.
TMP_PREFIX = ".leo-tmp-"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENDPOINT_RE = re.compile(r"^https?://[^/\s?#]+/?$")
REGION_RE = re.compile(r"^[a-z0-9-]{2,40}$")


class StorageError(LaunchError):
    """A storage operation failed at run time (exit code 1); one-line message."""


class NotFoundError(StorageError):
    """The object or file does not exist."""


class TooLarge(StorageError):
    """An object larger than the caller reads into memory."""


def too_large(url: object, size: int, max_bytes: int) -> TooLarge:
    return TooLarge(f"{url} holds more than {max_bytes // 2**20} MiB ({size} bytes): too large "
                    "to read here; fetch it with leo-launch pull")


class IntegrityError(StorageError):
    """Downloaded content does not match its recorded size or hash."""


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL. `key` is the prefix inside the bucket ('' for the root);
    for local URLs `path` is the absolute path and `bucket`/`key` are empty."""

    scheme: str  # "s3", "obs" or "file"
    bucket: str = ""
    key: str = ""
    path: str = ""

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def name(self) -> str:
        """The last path segment ('' for a bucket root)."""
        if self.is_local:
            return Path(self.path).name
        return self.key.rsplit("/", 1)[-1] if self.key else ""

    def child(self, relative: str) -> StorageURL:
        """This URL with '/'-separated `relative` appended."""
        parts = split_key(relative, str(self), allow_empty=True)
        if not parts:
            return self
        if self.is_local:
            return StorageURL("file", path=str(Path(self.path).joinpath(*parts)))
        key = "/".join(([self.key] if self.key else []) + parts)
        return StorageURL(self.scheme, self.bucket, key)

    def parent(self) -> StorageURL:
        if self.is_local:
            return StorageURL("file", path=str(Path(self.path).parent))
        if not self.key:
            raise UsageError(f"{self} is a bucket root: it has no parent")
        return StorageURL(self.scheme, self.bucket, self.key.rpartition("/")[0])

    def __str__(self) -> str:
        if self.is_local:
            return Path(self.path).as_uri()
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"


def split_key(text: str, shown: str, *, allow_empty: bool = False) -> list[str]:
    text = text[:-1] if text.endswith("/") else text
    parts = text.split("/") if text else []
    for part in parts:
        if part in ("", ".", ".."):
            raise UsageError(f"malformed storage URL {shown!r}: empty, '.' or '..' path segment")
    if not parts and not allow_empty:
        raise UsageError(f"malformed storage URL {shown!r}: no path")
    return parts


def parse_url(text: URLLike) -> StorageURL:
    """Parse `s3://bucket/prefix`, `obs://bucket/prefix`, `file:///abs/path` or a plain
    path (made absolute). Raises UsageError (exit 2) on a malformed URL."""
    if isinstance(text, StorageURL):
        return text
    if isinstance(text, os.PathLike):
        return StorageURL("file", path=os.path.abspath(os.fspath(text)))
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty storage URL")
    text = text.strip()
    if any(ord(c) < 32 for c in text):
        raise UsageError(f"malformed storage URL {text!r}: control characters are not allowed")
    if "://" not in text:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text):
            raise UsageError(f"malformed storage URL {text!r}: expected scheme://...")
        return StorageURL("file", path=os.path.abspath(os.path.expanduser(text)))
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f"unsupported storage URL scheme {scheme!r} in {text!r}: use s3://, obs://, file:// or a path"
        )
    if scheme == "file":
        host, slash, path = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise UsageError(f"malformed file URL {text!r}: expected file:///absolute/path")
        from urllib.parse import unquote

        # str() of a file URL is Path.as_uri(), percent-encoded: decode, so it parses back
        path = unquote(path)
        if any(ord(c) < 32 for c in path):
            raise UsageError(f"malformed file URL {text!r}: control characters are not allowed")
        return StorageURL("file", path=os.path.abspath("/" + path))
    if any(c in rest for c in "?#\\") or any(ord(c) < 32 for c in rest):
        raise UsageError(f"malformed storage URL {text!r}: '?', '#', '\\' and control characters are not allowed")
    bucket, _, key = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise UsageError(
            f"malformed storage URL {text!r}: bucket name must be 3-63 lowercase letters, digits, '.' or '-'"
        )
    parts = split_key(key, text, allow_empty=True)
    return StorageURL(scheme, bucket, "/".join(parts))


URLLike = str | os.PathLike | StorageURL

# ----------------------------------------------------------------------- options


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage. `None` fields fall back to the environment."""

    endpoint: str | None = None
    path_style: bool | None = None
    region: str | None = None
    max_attempts: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    part_size: int = DEFAULT_PART_SIZE
    progress: bool | None = None  # None: a bar when stderr is a terminal
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    timeout: float | None = None  # None: LEO_STORAGE_TIMEOUT, else DEFAULT_TIMEOUT
    sign_payload: bool | None = None  # None: LEO_STORAGE_SIGN_PAYLOAD, else off (sha256 verified instead)

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            _check_endpoint(self.endpoint)
        if self.region is not None and not REGION_RE.match(self.region):
            raise UsageError(f"malformed storage region {self.region!r}")
        if self.concurrency < 1:
            raise UsageError("storage concurrency must be at least 1")
        if self.part_size < 5 * MB:
            raise UsageError("storage part size must be at least 5 MiB (the S3 minimum)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise UsageError("storage max attempts must be at least 1")
        if self.timeout is not None and not 0 < self.timeout <= MAX_TIMEOUT:
            raise UsageError(f"--storage-timeout must be between 0 and {MAX_TIMEOUT:.0f} seconds")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> StorageOptions:
        """Options from the flags added by `add_storage_arguments`."""
        values: dict[str, Any] = {
            "endpoint": getattr(args, "storage_endpoint", None),
            "path_style": True if getattr(args, "path_style", False) else None,
            "region": getattr(args, "storage_region", None),
        }
        concurrency = getattr(args, "concurrency", None)
        if concurrency is not None:
            values["concurrency"] = concurrency
        if getattr(args, "storage_timeout", None) is not None:
            values["timeout"] = args.storage_timeout
        values.update(overrides)
        return cls(**values)

    def resolved_endpoint(self, scheme: str, environ: Mapping[str, str] | None = None) -> str | None:
        """The endpoint URL to use for `scheme`, or None for the AWS default."""
        env = os.environ if environ is None else environ
        endpoint = self.endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            _check_endpoint(endpoint)
            return endpoint.rstrip("/")
        if scheme == "obs":
            region = self.resolved_region(scheme, env)
            if not region:
                raise UsageError(
                    "obs:// needs a region: pass --storage-region (e.g. cn-north-4) or --storage-endpoint, "
                    "or set OBS_REGION"
                )
            return f"https://obs.{region}.myhuaweicloud.com"
        return None

    def resolved_region(self, scheme: str, environ: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        region = self.region
        if not region and scheme == "obs":
            region = env.get("OBS_REGION")
        region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region and not REGION_RE.match(region):
            raise UsageError(f"malformed storage region {region!r}")
        return region or None

    def resolved_addressing(self, scheme: str, environ: Mapping[str, str] | None = None) -> str:
        """"path", "virtual" or "auto" (botocore decides: virtual on AWS, path on an IP).
        `path_style` True/False forces it; else LEO_STORAGE_PATH_STYLE; else virtual for
        obs:// and auto for s3://."""
        env = os.environ if environ is None else environ
        path_style = self.path_style
        if path_style is None and env.get("LEO_STORAGE_PATH_STYLE", "").strip():
            path_style = _truthy(env.get("LEO_STORAGE_PATH_STYLE"))
        if path_style is None:
            return "virtual" if scheme == "obs" else "auto"
        return "path" if path_style else "virtual"

    def resolved_sign_payload(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether request bodies are hashed into the SigV4 signature. Off by default:
        every object carries its sha256, checked on every read, and the hash pass costs
        CPU on each upload; LEO_STORAGE_SIGN_PAYLOAD=1 turns it on for a service that
        refuses UNSIGNED-PAYLOAD."""
        env = os.environ if environ is None else environ
        if self.sign_payload is not None:
            return self.sign_payload
        return _truthy(env.get("LEO_STORAGE_SIGN_PAYLOAD"))

    def resolved_timeout(self, environ: Mapping[str, str] | None = None) -> float:
        """Seconds after which a request without an answer is given up, retries included."""
        env = os.environ if environ is None else environ
        if self.timeout is not None:
            return self.timeout
        try:
            value = float(env.get("LEO_STORAGE_TIMEOUT", ""))
        except ValueError:
            return DEFAULT_TIMEOUT
        return value if 0 < value <= MAX_TIMEOUT else DEFAULT_TIMEOUT

    def resolved_max_attempts(self, environ: Mapping[str, str] | None = None) -> int:
        env = os.environ if environ is None else environ
        if self.max_attempts is not None:
            return self.max_attempts
        try:
            return max(1, int(env.get("AWS_MAX_ATTEMPTS", "")))
        except ValueError:
            return DEFAULT_MAX_ATTEMPTS


@dataclass(frozen=True)
class StorageSettings:
    """A job's own storage settings (its JobSpec, the pods' environment, a local job's
    job.yaml): what a command about the job starts from, so that nobody repeats them."""

    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, Any]) -> StorageSettings:
        """From a pod's environment as rendered (see `pod_environment`)."""
        style = env.get("LEO_STORAGE_PATH_STYLE")
        return cls(endpoint=env.get("AWS_ENDPOINT_URL") or None,
                   region=env.get("OBS_REGION") or env.get("AWS_REGION") or None,
                   path_style=_truthy(style) if style else None)

    def options(self, args: argparse.Namespace | None = None, **overrides: Any) -> StorageOptions:
        """The one way a command about a job gets its storage options (status, logs, pull,
        report): the job's settings, each overridden by the flag given on the command line."""
        values: dict[str, Any] = {"endpoint": self.endpoint, "region": self.region,
                                  "path_style": self.path_style}
        if args is not None:
            flags = StorageOptions.from_args(args)
            values.update({k: v for k, v in dataclasses.asdict(flags).items()
                           if k not in values or v is not None})
        values.update(overrides)
        return StorageOptions(**values)


def storage_problem(urls: list[str | None], settings: StorageSettings,
                    environ: Mapping[str, str]) -> str | None:
    """Why a process with `environ` and a job's `settings` could not reach `urls`, or None.
    render/submit check with an empty environment (the pods get only what the job gives
    them), the local backend with this machine's, the bootstrap with its own: one check."""
    options = settings.options()
    for url in urls:
        if not url:
            continue
        parsed = parse_url(url)
        if parsed.is_local:
            continue
        try:
            options.resolved_endpoint(parsed.scheme, environ)
        except UsageError as err:
            return f"{url}: {err}"
    return None


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """The storage flags shared by push and pull."""
    group = parser.add_argument_group("storage")
    group.add_argument("--storage-endpoint", metavar="URL",
                       help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, AWS for s3://, "
                       "https://obs.<region>.myhuaweicloud.com for obs://)")
    group.add_argument("--storage-region", metavar="REGION",
                       help="region (default: OBS_REGION for obs://, AWS_REGION, AWS_DEFAULT_REGION)")
    group.add_argument("--path-style", action="store_true",
                       help="path-style addressing (endpoint/bucket/key) instead of virtual-hosted")
    group.add_argument("--concurrency", type=_positive_int, metavar="N",
                       help=f"parallel transfers (default {DEFAULT_CONCURRENCY})")
    group.add_argument("--storage-timeout", type=_seconds, metavar="SECONDS",
                       help=f"give up on a storage request that gets no answer after SECONDS, "
                       f"retries included (default {DEFAULT_TIMEOUT:.0f}, or LEO_STORAGE_TIMEOUT); "
                       f"raise it for a slow or distant server")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from err
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_TIMEOUT:.0f}")
    return value


def redact_endpoint(endpoint: str) -> str:
    """An endpoint without any user:password@ part."""
    return re.sub(r"^(\w+://)[^/@]*@", r"\1", endpoint)


def redact_urls(text: str) -> str:
    """`text` with the user:password@ part of every URL in it removed (for messages)."""
    return re.sub(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]*@", r"\1", text)


def url_problem(url: str) -> str | None:
    """Why `url` is not a storage URL the pods accept (parse_url's reason), or None:
    submit and render check with the very parser the bootstrap uses."""
    try:
        parse_url(url)
    except UsageError as err:
        return str(err)
    return None


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` is not usable as an object-store endpoint, or None. Credentials
    are refused: they belong in the storage Secret, not in a ConfigMap or a process's
    environment."""
    if not isinstance(endpoint, str):
        return "must be a string"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in endpoint):
        return "must not contain control characters"
    netloc = endpoint.partition("://")[2].partition("/")[0]
    if "@" in netloc:
        return ("must not hold credentials (user:password@): give them as the storage Secret "
                "or the AWS_* variables")
    if not _ENDPOINT_RE.match(endpoint):
        return "must be an http:// or https:// URL of a host[:port], with no path, query or fragment"
    from urllib.parse import urlsplit

    try:
        port = urlsplit(endpoint).port
    except ValueError as err:
        return f"has a bad port ({err})"
    if port is not None and not 0 < port < 65536:
        return "has a bad port"
    return None


def _check_endpoint(endpoint: str) -> None:
    problem = endpoint_problem(endpoint)
    if problem:
        raise UsageError(f"storage endpoint {redact_endpoint(endpoint)!r} {problem}")


# ------------------------------------------------------------------------ stores


@dataclass(frozen=True, slots=True)  # slots: a listing of 10^6 objects stays compact
class ObjectInfo:
    """What a listing or stat knows of one object. `etag` is without quotes; `sha256`
    is known from object metadata (stat of an object store) or by hashing (local)."""

    key: str
    size: int
    etag: str | None = None
    sha256: str | None = None
    mtime: float | None = None

    @property
    def md5(self) -> str | None:
        """The content MD5 when the ETag is one (single-part, unencrypted uploads)."""
        if self.etag and re.fullmatch(r"[0-9a-f]{32}", self.etag):
            return self.etag
        return None


ProgressFn = Callable[[int], None]


class Store(Protocol):
    """Operations shared by local directories and object-store prefixes.
    Keys are '/'-separated paths relative to `url`."""

    url: StorageURL
    options: StorageOptions

    def list(self, prefix: str = "") -> dict[str, ObjectInfo]:
        """All objects under `prefix` (recursively), by key."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and sha256 of one object, None when it does not exist."""
        ...

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The content of a small object, verified. NotFoundError when missing; TooLarge
        (before reading it) when it holds more than `max_bytes`."""
        ...

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """The content of an object of any size as a stream of chunks (bounded memory),
        verified against its recorded hash once the last chunk is read. NotFoundError
        when missing (raised by the first next())."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a small object in one request (atomically for local stores)."""
        ...

    def put_file(self, local: Path, key: str, progress: ProgressFn | None = None) -> str:
        """Upload a file (multipart when large); returns its sha256."""
        ...

    def get_file(self, key: str, dest: Path, info: ObjectInfo | None = None,
                 progress: ProgressFn | None = None) -> str:
        """Download to `dest` through a temporary file, verified against the object's
        recorded hash, renamed into place at the end; returns the sha256."""
        ...

    def delete(self, keys: list[str]) -> None:
        ...

    def close(self) -> None:
        ...

    def __enter__(self) -> Store:
        ...

    def __exit__(self, *exc: object) -> None:
        ...


@dataclass
class SyncReport:
    """What a sync, push or pull did."""

    files: int = 0  # files considered at the source
    transferred: int = 0
    skipped: int = 0  # unchanged at the destination
    deleted: int = 0
    bytes: int = 0  # bytes transferred
    seconds: float = 0.0
    sha256: dict[str, str] = field(default_factory=dict)  # of uploaded files (and download_files), by key
    links: list[str] = field(default_factory=list)  # symbolic links skipped (never followed)

    def summary(self, verb: str) -> str:
        text = (f"{verb} {self.transferred} file(s), {_human(self.bytes)}; "
                f"{self.skipped} unchanged")
        if self.deleted:
            text += f"; {self.deleted} deleted"
        return text + f"; {self.seconds:.1f} s"


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GB"
