"""How many bytes a job will stage from a URL (issue 23: the /cache sizeLimit is derived
from it at submit): one object (`.zip`, `.ckpt`, `.npz`) or everything under a prefix, as
launcher.pod.stage copies them."""

from __future__ import annotations

from launcher.storage import StorageOptions, open_store, parse_url
from launcher.storage.base import NotFoundError

ONE_OBJECT = (".zip", ".ckpt", ".npz")


def staged_bytes(url: str, options: StorageOptions) -> int:
    """The size of what `url` names (StorageError when it cannot be read)."""
    parsed = parse_url(url)
    if parsed.name.lower().endswith(ONE_OBJECT):
        with open_store(parsed.parent(), options) as store:
            info = store.stat(parsed.name)
        if info is None:
            raise NotFoundError(f"{url}: no such object")
        return info.size
    with open_store(parsed, options) as store:
        return sum(info.size for info in store.list().values())
