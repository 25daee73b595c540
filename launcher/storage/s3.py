"""The store of `s3://` and `obs://` URLs, through boto3.

- One client per store (thread-safe), configured for the endpoint: s3v4 signatures,
  virtual-hosted addressing for OBS (path-style when asked), checksum calculation and
  validation "when_required" for OBS and custom endpoints (OBS rejects the new default
  checksum headers), botocore's "standard" retries with exponential back-off for
  throttling, 5xx and connection errors, plus retries of interrupted response bodies.
- Uploads below 8 MB go in one PUT from memory, larger ones through the s3transfer
  transfer manager (multipart from the part size on, parallel parts). Downloads below
  twice the part size are one streamed GET hashed on the way; larger ones parallel ranged
  GETs by the transfer manager. Part size and concurrency come from StorageOptions
  (64 MB and 10 by default: few large requests suit both OBS and SeaweedFS).
- Every object written gets its sha256 in the metadata (`x-amz-meta-sha256`); every
  object read is verified against it, or against the MD5 of a single-part ETag.
- botocore errors become one-line StorageErrors; credentials never appear in them.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore import exceptions as bx
from botocore.config import Config
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from launcher.storage.base import (
    IntegrityError,
    NotFoundError,
    ObjectInfo,
    ProgressFn,
    StorageError,
    StorageOptions,
    StorageURL,
    redact_endpoint,
    too_large,
)
from launcher.storage.files import (
    CHUNK,
    check_content,
    hash_file,
    local_error,
    md5_bytes,
    sha256_bytes,
    tmp_path,
)

SHA_KEY = "sha256"
# Objects below this size go in one request, held in memory (bounded: concurrency x 8 MB);
# larger ones are streamed by the transfer manager, multipart from `part_size` on.
SMALL = 8 * 1024 * 1024
# Errors while reading a response body, which botocore does not retry by itself.
_BODY_ERRORS = (bx.IncompleteReadError, bx.ReadTimeoutError, bx.ResponseStreamingError)


def make_client(scheme: str, options: StorageOptions):
    """A boto3 S3 client for `scheme` ("s3" or "obs") with the options resolved."""
    endpoint = options.resolved_endpoint(scheme)
    region = options.resolved_region(scheme) or ("us-east-1" if endpoint else None)
    addressing = options.resolved_addressing(scheme)
    deadline = options.resolved_timeout()
    extra = {}
    if scheme == "obs" or endpoint:
        extra = {"request_checksum_calculation": "when_required",
                 "response_checksum_validation": "when_required"}
    config = Config(
        signature_version="s3v4",
        # Bodies are not hashed into the signature by default (UNSIGNED-PAYLOAD): every
        # object carries its sha256, verified on every read instead.
        s3={"addressing_style": addressing,
            "payload_signing_enabled": options.resolved_sign_payload()},
        retries={"mode": "standard", "total_max_attempts": options.resolved_max_attempts()},
        connect_timeout=min(options.connect_timeout, deadline),
        read_timeout=min(options.read_timeout, deadline),
        max_pool_connections=max(10, 2 * options.concurrency),
        tcp_keepalive=True,
        user_agent_extra="leo-launch",
        **extra,
    )
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    where = redact_endpoint(endpoint) if endpoint else "the default AWS endpoint"
    client.meta.events.register("request-created.s3", _deadline_hook(
        deadline, min(options.read_timeout, deadline), where))
    client.meta.events.register_first("needs-retry.s3", _untrusted_certificate_hook(where))
    return client


# Bounds of one listing (1,000 keys a page): far above any job's tree, far below a hang.
MAX_LIST_PAGES = 20_000
MAX_LIST_KEYS = 2_000_000


class StorageTimeout(StorageError):
    """A storage request got no answer within the deadline (exit code 1)."""


def _deadline_hook(deadline: float, attempt_limit: float, where: str):
    """Gives up, before a retry, on a request that cannot end within `deadline` s of its
    first attempt (botocore's retries alone would wait attempts x read timeout)."""

    def check(request, operation_name: str | None = None, **kwargs) -> None:  # noqa: ANN001, ARG001
        context = getattr(request, "context", None)
        if context is None:
            return
        now = time.monotonic()
        started = context.setdefault("leo_started", now)
        if now - started + attempt_limit > deadline:
            raise StorageTimeout(
                f"the storage server {where} did not answer {operation_name or 'a request'} "
                f"within {deadline:.0f} s (is it up and reachable?); a slow server needs "
                f"--storage-timeout SECONDS or LEO_STORAGE_TIMEOUT")

    return check


class UntrustedCertificate(StorageError):
    """The endpoint's TLS certificate failed verification: no retry can change that."""


def _untrusted_certificate_hook(where: str):
    """Stops botocore retrying a request whose TLS certificate failed verification (its
    retries count it as a connection error) and says what to do instead."""

    def check(caught_exception=None, **kwargs) -> None:  # noqa: ANN001, ARG001
        if isinstance(caught_exception, bx.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(caught_exception):
            detail = str(caught_exception).split("certificate verify failed:")[-1].split("(_ssl")[0]
            raise UntrustedCertificate(
                f"the storage server {where} presented a TLS certificate that is not trusted here "
                f"(SSLError: certificate verify failed:{detail.rstrip(' ')}); give its CA bundle with "
                "AWS_CA_BUNDLE, or check the endpoint's host name")

    return check


class _Progress(BaseSubscriber):
    def __init__(self, callback: ProgressFn | None, size: int | None = None) -> None:
        self.callback = callback
        self.size = size

    def on_queued(self, future, **kwargs):  # noqa: ANN001 - s3transfer's signature
        if self.size is not None:
            future.meta.provide_transfer_size(self.size)  # saves a HeadObject

    def on_progress(self, future, bytes_transferred, **kwargs):  # noqa: ANN001
        if self.callback is not None:
            self.callback(bytes_transferred)


class ObjectStore:
    """A prefix in a bucket of an S3-compatible service (AWS S3, OBS, SeaweedFS, ...)."""

    def __init__(self, url: StorageURL, options: StorageOptions) -> None:
        self.url = url
        self.options = options
        self.bucket = url.bucket
        self.prefix = url.key
        self.endpoint = options.resolved_endpoint(url.scheme)  # malformed → UsageError now
        self._client = None
        self._manager: TransferManager | None = None
        self._lock = threading.Lock()
        self._attempts = options.resolved_max_attempts()

    # ------------------------------------------------------------ plumbing

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = make_client(self.url.scheme, self.options)
            return self._client

    @property
    def manager(self) -> TransferManager:
        client = self.client
        with self._lock:
            if self._manager is None:
                size = self.options.part_size
                config = TransferConfig(
                    multipart_threshold=size,
                    multipart_chunksize=size,
                    max_request_concurrency=self.options.concurrency,
                    max_submission_concurrency=max(5, self.options.concurrency),
                    io_chunksize=1024 * 1024,
                    max_io_queue_size=64,  # at most ~64 MB of downloaded chunks waiting for the disk
                    num_download_attempts=self._attempts,
                    max_in_memory_upload_chunks=max(10, self.options.concurrency),
                    max_in_memory_download_chunks=max(10, self.options.concurrency),
                )
                self._manager = TransferManager(client, config)
            return self._manager

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _where(self) -> str:
        return redact_endpoint(self.endpoint) if self.endpoint else "the default AWS endpoint"

    def _error(self, err: BaseException, key: str | None, *, probe: bool = False) -> StorageError:
        """Translate a botocore/s3transfer error about `key` into a StorageError. With
        `probe`, a bare 403/404 (HEAD responses carry no error code) is explained by
        listing the bucket, which reports missing buckets and bad credentials."""
        if isinstance(err, StorageError):
            return err
        target = str(self.url.child(key)) if key else str(self.url)
        if probe and _code(err) in ("403", "404", "Forbidden", "NotFound"):
            try:
                self._probe()
            except StorageError as specific:
                return specific
        return translate(err, target, self._where(), self._attempts)

    def _probe(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1, Prefix=self.prefix)
        except Exception as err:  # noqa: BLE001 - translated
            raise translate(err, str(self.url), self._where(), self._attempts) from err

    # ------------------------------------------------------------ operations

    def list(self, prefix: str = "") -> dict[str, ObjectInfo]:
        full = self._key(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        found: dict[str, ObjectInfo] = {}
        # A server answering IsTruncated with a fresh token forever must not hang us: the
        # listing ends within the storage deadline of its last new key and MAX_LIST_PAGES.
        deadline = self.options.resolved_timeout()
        progress_at = time.monotonic()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{full}/" if full else "")
            for number, page in enumerate(pages, 1):
                before = len(found)
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if key.endswith("/") or not key.startswith(root):
                        continue  # "folder" markers made by consoles
                    rel = key[len(root):]
                    found[rel] = ObjectInfo(rel, int(obj["Size"]), etag=_etag(obj.get("ETag")),
                                            mtime=_timestamp(obj.get("LastModified")))
                now = time.monotonic()
                progress_at = now if len(found) > before else progress_at
                if now - progress_at > deadline or number >= MAX_LIST_PAGES \
                        or len(found) > MAX_LIST_KEYS:
                    raise StorageError(
                        f"listing {self.url.child(prefix) if prefix else self.url} did not end "
                        f"({number} pages, {len(found)} keys; limits: {MAX_LIST_PAGES} pages, "
                        f"{MAX_LIST_KEYS} keys, {deadline:.0f} s without a new key): the server "
                        "keeps answering IsTruncated")
        except Exception as err:  # noqa: BLE001 - translated
            raise self._error(err, prefix) from err
        return found

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as err:  # noqa: BLE001 - translated
            if _code(err) in ("404", "NoSuchKey", "NotFound"):
                self._probe()  # a missing bucket also answers 404
                return None
            raise self._error(err, key, probe=True) from err
        return _head_info(key, head)

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        data, _ = self._get(key, max_bytes)
        return data

    def _get_object(self, key: str, what) -> dict:
        """GetObject, with a missing key (or bucket) turned into one clear error."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as err:  # noqa: BLE001 - translated
            if _code(err) in ("NoSuchKey", "404"):
                self._probe()
                raise NotFoundError(f"{what} does not exist") from err
            raise self._error(err, key, probe=True) from err

    def _get(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """GET a whole object with retries of interrupted bodies; verified; (data, sha256).
        With `max_bytes`, a larger object is refused before (or while, if the server's
        Content-Length lies) reading it."""
        for attempt in range(1, self._attempts + 1):
            response = self._get_object(key, self.url.child(key))
            size = int(response.get("ContentLength") or 0)
            try:
                if max_bytes is not None and size > max_bytes:
                    raise too_large(self.url.child(key), size, max_bytes)
                data = response["Body"].read(max_bytes + 1 if max_bytes is not None else None)
                if max_bytes is not None and len(data) > max_bytes:
                    raise too_large(self.url.child(key), len(data), max_bytes)
                break
            except _BODY_ERRORS as err:
                if attempt == self._attempts:
                    raise self._error(err, key) from err
                _backoff(attempt)
        sha = sha256_bytes(data)
        expected_sha = (response.get("Metadata") or {}).get(SHA_KEY)
        etag = _etag(response.get("ETag"))
        md5 = md5_bytes(data) if not expected_sha and ObjectInfo(key, 0, etag).md5 else None
        check_content(str(self.url.child(key)), len(data), sha, md5, response.get("ContentLength"),
                      expected_sha, ObjectInfo(key, 0, etag).md5)
        return data, sha

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """One GET read chunk by chunk and hashed on the way; an interrupted body is
        continued with a ranged GET from where it broke (with back-off)."""
        what = self.url.child(key)
        response = self._get_object(key, what)
        recorded = (response.get("Metadata") or {}).get(SHA_KEY)
        etag_md5 = ObjectInfo(key, 0, _etag(response.get("ETag"))).md5
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if not recorded and etag_md5 else None
        size, attempt, body = 0, 1, response["Body"]
        while True:
            try:
                chunk = body.read(CHUNK)
            except _BODY_ERRORS as err:
                if attempt == self._attempts:
                    raise self._error(err, key) from err
                _backoff(attempt)
                attempt += 1
                body = self._get_range(key, size)
                continue
            if not chunk:
                break
            sha.update(chunk)
            if md5 is not None:
                md5.update(chunk)
            size += len(chunk)
            yield chunk
        check_content(str(what), size, sha.hexdigest(), md5.hexdigest() if md5 is not None else None,
                      response.get("ContentLength"), recorded, etag_md5)

    def _get_range(self, key: str, start: int):  # noqa: ANN202 - a botocore stream
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                          Range=f"bytes={start}-")["Body"]
        except Exception as err:  # noqa: BLE001 - translated
            raise self._error(err, key, probe=True) from err

    def put_bytes(self, key: str, data: bytes) -> None:
        self._put(key, data, sha256_bytes(data))

    def _put(self, key: str, data: bytes, sha: str) -> None:
        extra = {"ContentType": "application/json"} if key.endswith(".json") else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   Metadata={SHA_KEY: sha}, **extra)
        except Exception as err:  # noqa: BLE001 - translated
            raise self._error(err, key, probe=True) from err

    def put_file(self, local: Path, key: str, progress: ProgressFn | None = None) -> str:
        try:
            size = local.stat().st_size
            if size < SMALL:
                data = local.read_bytes()
                sha = sha256_bytes(data)
                self._put(key, data, sha)
                if progress is not None:
                    progress(len(data))
                return sha
        except OSError as err:
            raise local_error(err, local) from err
        sha, _ = hash_file(local)
        future = self.manager.upload(str(local), self.bucket, self._key(key),
                                     extra_args={"Metadata": {SHA_KEY: sha}},
                                     subscribers=[_Progress(progress)])
        self._wait(future, key)
        return sha

    def get_file(self, key: str, dest: Path, info: ObjectInfo | None = None,
                 progress: ProgressFn | None = None) -> str:
        """Objects below twice the part size: one GET streamed to a temporary file and
        hashed on the way (a single connection carries them about as fast, and the file is
        read once). Larger ones: HEAD (for the recorded sha256), parallel ranged GETs by the
        transfer manager, then a hash of the file. Verified, then renamed into place."""
        what = str(self.url.child(key))
        stream_below = 2 * self.options.part_size
        if info is not None and info.size < stream_below:
            return self._get_stream(key, dest, info.sha256, progress)
        head = self.stat(key) if info is None or info.sha256 is None else info
        if head is None:
            raise NotFoundError(f"{what} does not exist")
        if head.size < stream_below:
            return self._get_stream(key, dest, head.sha256, progress)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise local_error(err, dest.parent) from err
        tmp = tmp_path(dest)
        try:
            future = self.manager.download(self.bucket, self._key(key), str(tmp),
                                           subscribers=[_Progress(progress, head.size)])
            self._wait(future, key)
            sha, md5 = hash_file(tmp, md5=head.sha256 is None and head.md5 is not None)
            check_content(what, tmp.stat().st_size, sha, md5, head.size, head.sha256, head.md5)
            os.replace(tmp, dest)
        except OSError as err:
            raise local_error(err, dest) from err
        finally:
            tmp.unlink(missing_ok=True)
        return sha

    def _get_stream(self, key: str, dest: Path, expected_sha: str | None,
                    progress: ProgressFn | None) -> str:
        """One GET into a temporary file beside `dest`, hashed while it is written;
        an interrupted body is fetched again (with back-off)."""
        what = str(self.url.child(key))
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise local_error(err, dest.parent) from err
        tmp = tmp_path(dest)
        try:
            for attempt in range(1, self._attempts + 1):
                response = self._get_object(key, what)
                recorded = (response.get("Metadata") or {}).get(SHA_KEY)
                etag_md5 = ObjectInfo(key, 0, _etag(response.get("ETag"))).md5
                sha = hashlib.sha256()
                md5 = hashlib.md5(usedforsecurity=False) if not recorded and etag_md5 else None
                size = 0
                try:
                    with open(tmp, "wb") as out:
                        body = response["Body"]
                        while chunk := body.read(CHUNK):
                            sha.update(chunk)
                            if md5 is not None:
                                md5.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
                            if progress is not None:
                                progress(len(chunk))
                    break
                except _BODY_ERRORS as err:
                    if progress is not None:
                        progress(-size)
                    if attempt == self._attempts:
                        raise self._error(err, key) from err
                    _backoff(attempt)
            digest = sha.hexdigest()
            check_content(what, size, digest, md5.hexdigest() if md5 is not None else None,
                          response.get("ContentLength"), recorded, etag_md5)
            if expected_sha and digest != expected_sha:
                raise IntegrityError(f"sha256 mismatch for {what}: expected {expected_sha[:16]}..., "
                                     f"got {digest[:16]}...")
            os.replace(tmp, dest)
        except OSError as err:
            raise local_error(err, dest) from err
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as err:  # noqa: BLE001 - translated
                raise self._error(err, None, probe=True) from err
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(f"cannot delete {first.get('Key')}: {first.get('Code')}")

    def _wait(self, future, key: str) -> None:  # noqa: ANN001
        try:
            future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - translated
            if isinstance(err, OSError) and not isinstance(err, ConnectionError):
                raise local_error(err) from err
            raise self._error(err, key, probe=True) from err

    def close(self) -> None:
        with self._lock:
            manager, client = self._manager, self._client
            self._manager = self._client = None
        if manager is not None:
            manager.shutdown()
        if client is not None:
            client.close()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- helpers


def _etag(value: str | None) -> str | None:
    return value.strip('"').lower() if value else None


def _timestamp(value) -> float | None:  # noqa: ANN001
    return value.timestamp() if value is not None else None


def _head_info(key: str, head: dict) -> ObjectInfo:
    sha = (head.get("Metadata") or {}).get(SHA_KEY)
    return ObjectInfo(key, int(head.get("ContentLength", 0)), etag=_etag(head.get("ETag")),
                      sha256=sha.lower() if sha else None,
                      mtime=_timestamp(head.get("LastModified")))


def _backoff(attempt: int) -> None:
    time.sleep(min(10.0, 0.25 * 2 ** attempt) * random.uniform(0.5, 1.0))


def _code(err: BaseException) -> str:
    if isinstance(err, bx.ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def translate(err: BaseException, target: str, where: str, attempts: int) -> StorageError:
    """A one-line StorageError for a botocore or s3transfer error on `target`."""
    if isinstance(err, StorageError):
        return err
    if isinstance(err, RetriesExceededError) and err.last_exception is not None:
        return translate(err.last_exception, target, where, attempts)
    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StorageError("no storage credentials found: set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    if isinstance(err, bx.ClientError):
        code = _code(err)
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = target.split("/")[2] if "://" in target else target
        if code == "InvalidAccessKeyId":
            return StorageError(f"{where} does not know the access key (InvalidAccessKeyId): "
                                "check AWS_ACCESS_KEY_ID or the profile")
        if code == "SignatureDoesNotMatch":
            return StorageError(f"{where} rejected the request signature (SignatureDoesNotMatch): "
                                "wrong secret key, or for OBS an endpoint that is not the region endpoint")
        if code == "NoSuchBucket":
            return StorageError(f"bucket {bucket!r} does not exist at {where}")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFoundError(f"{target} does not exist")
        if code == "RequestTimeTooSkewed":
            return StorageError(f"{where} refused the request: this machine's clock is off by more than 15 minutes")
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
            return StorageError(f"access denied to {target} at {where}")
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503"):
            return StorageError(f"{where} kept throttling requests for {target} ({code}) after {attempts} attempts")
        message = str(err.response.get("Error", {}).get("Message", "")).splitlines()[0:1]
        detail = f": {message[0]}" if message and message[0] else ""
        return StorageError(f"storage request for {target} failed with {code or status}{detail}")
    if isinstance(err, bx.ReadTimeoutError):
        return StorageError(f"the storage server {where} did not answer for {target} "
                            f"({attempts} attempts); a slow server needs --storage-timeout "
                            "SECONDS or LEO_STORAGE_TIMEOUT")
    if isinstance(err, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return StorageError(f"cannot reach the storage endpoint {where} "
                            f"(connection failed after {attempts} attempts)")
    if isinstance(err, _BODY_ERRORS + (bx.HTTPClientError, bx.ConnectionError, ConnectionError)):
        return StorageError(f"the connection to {where} broke during the transfer of {target} "
                            f"({type(err).__name__} after {attempts} attempts)")
    if isinstance(err, bx.BotoCoreError):
        return StorageError(f"storage error on {target}: {str(err).splitlines()[0]}")
    return StorageError(f"storage error on {target}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
