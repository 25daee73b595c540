"""Storage against a hostile server on 127.0.0.1 (issue 22 item 2): a ListObjectsV2 that
never ends must end the command with one line, not hang it. Writes are accepted (push
--delete puts its marker object first) and go nowhere."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from launcher.cli import main as cli
from launcher.storage import s3


class _EndlessListing(BaseHTTPRequestHandler):
    """Every listing page says IsTruncated=true with a fresh token; `new_keys` adds one
    new key a page (else pages are empty). Anything else: 404."""

    new_keys = False
    pages = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if "list-type=2" not in self.path:
            self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
            return
        cls = type(self)
        cls.pages += 1
        contents = (f"<Contents><Key>x/k{cls.pages}</Key><Size>1</Size></Contents>"
                    if cls.new_keys else "")
        body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                f"<Name>bkt</Name><Prefix>x/</Prefix><KeyCount>{int(cls.new_keys)}</KeyCount>"
                f"<MaxKeys>1000</MaxKeys>{contents}<IsTruncated>true</IsTruncated>"
                f"<NextContinuationToken>t{cls.pages}</NextContinuationToken></ListBucketResult>")
        self._send(200, body.encode())

    do_HEAD = do_GET  # noqa: N815

    def do_PUT(self) -> None:  # noqa: N802 - push --delete's marker object is accepted
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, b"")

    def do_POST(self) -> None:  # noqa: N802 - DeleteObjects (the marker, at the end)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, b'<?xml version="1.0" encoding="UTF-8"?><DeleteResult></DeleteResult>')

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endless(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "test")
    monkeypatch.delenv("LEO_STORAGE_TIMEOUT", raising=False)
    handler = type("Handler", (_EndlessListing,), {"pages": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["pull", "push"])
def test_endless_empty_listing_ends_within_the_deadline(endless, capsys, tmp_path, command):
    handler, endpoint = endless
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.txt").write_text("a")
    argv = (["pull", "s3://bkt/x", "--tree", "--to", str(tmp_path / "out")] if command == "pull"
            else ["push", str(tmp_path / "src"), "s3://bkt/x", "--delete"])
    started = time.monotonic()
    code, err = _run(capsys, *argv, "--storage-endpoint", endpoint, "--path-style",
                     "--storage-timeout", "2")
    assert code == 1 and time.monotonic() - started < 30, err
    assert err.count("\n") == 1 and "did not end" in err and "IsTruncated" in err, err
    assert handler.pages > 1


def test_endless_listing_with_new_keys_stops_at_the_page_cap(endless, capsys, tmp_path,
                                                             monkeypatch):
    handler, endpoint = endless
    handler.new_keys = True
    monkeypatch.setattr(s3, "MAX_LIST_PAGES", 50)
    code, err = _run(capsys, "pull", "s3://bkt/x", "--tree", "--to", str(tmp_path / "out"),
                     "--storage-endpoint", endpoint, "--path-style")
    assert code == 1 and "50 pages" in err, err
    assert handler.pages == 50
    assert not Path(tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
