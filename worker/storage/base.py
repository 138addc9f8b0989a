"""The storage interface: keys and their areas, the stored-object record, the errors."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol


AREAS = ("incoming", "restricted", "agency")
# Areas whose objects carry a location or an unsanitized file: private to the service's own user.
PRIVATE_AREAS = frozenset({"incoming", "restricted"})

_KEY_RE = re.compile(r"^(incoming|restricted|agency)/[A-Za-z0-9_-]{1,64}/[A-Za-z0-9._-]{1,64}$")
SIDECAR_SUFFIX = ".meta.json"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredObject:
    key: str
    bytes: int
    sha256: str
    content_type: str
    tags: dict[str, str] = field(default_factory=dict)


class StorageError(Exception):
    """Infrastructure trouble (disk, network, the object store): the worker retries."""


class ObjectExists(StorageError):
    """A different object already sits at that key and the caller did not ask to replace it."""


class Store(Protocol):
    def put_file(self, key: str, path: Path, *, content_type: str, tags: dict[str, str],
                 replace: bool = False) -> StoredObject: ...

    def get_file(self, key: str, dest: Path) -> StoredObject: ...

    def iter_bytes(self, key: str, *, start: int = 0, end: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def head(self, key: str) -> StoredObject | None: ...

    def delete(self, key: str) -> None: ...


def validate_key(key: str) -> str:
    """Return `key` if it is a well-formed storage key, else raise ValueError.

    The pattern admits no `/` inside a part, no `%`, no empty part, and the last part may not start
    with a dot (no `.`, `..`, hidden temp files) nor end like a local sidecar: a key can never name
    anything outside its own area and upload folder.
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"not a storage key: {key!r}")
    name = key.rsplit("/", 1)[1]
    if name.startswith(".") or name.endswith(SIDECAR_SUFFIX):
        raise ValueError(f"not a storage key: {key!r}")
    return key


def key_area(key: str) -> str:
    return validate_key(key).split("/", 1)[0]


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in bounded chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range {start}-{end}")
