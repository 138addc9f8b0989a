"""The local-directory store: the embedded default, and a shared volume in small deployments."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from worker.storage.base import (HASH_CHUNK, PRIVATE_AREAS, SIDECAR_SUFFIX, ObjectExists, StorageError, StoredObject,
                                 check_range, file_sha256, key_area, validate_key)


class LocalStore:
    """Files under `root/<key>`, each with a sidecar `<file>.meta.json` holding sha256, size,
    content type and tags.

    Why a sidecar and not extended attributes: xattrs are missing or size-limited on some
    filesystems (older tmpfs, overlayfs in containers, NFS) and are silently dropped by ordinary
    `cp`, `tar` and backup tools; a sidecar survives every copy and is readable with `cat`.

    Every file is written to a temp file in the same folder, fsynced, then `os.replace`d. The data
    file is replaced before its sidecar and the sidecar is the commit: an object without a sidecar
    does not exist. A crash between the two during a *replace* leaves new bytes under the old
    sidecar; `get_file` checks the sha256 and raises StorageError, so the reprocess is retried.
    Writers to one upload folder take an flock on that folder, so two workers racing on the same
    key cannot both "create" it.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # paths and modes
    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + SIDECAR_SUFFIX)

    @staticmethod
    def _modes(key: str) -> tuple[int, int]:
        """(file mode, folder mode): private areas are the service user's alone; agency copies are
        also readable by the group (e.g. a separate API process)."""
        return (0o600, 0o700) if key_area(key) in PRIVATE_AREAS else (0o640, 0o750)

    def _ensure_folder(self, key: str) -> Path:
        _, dir_mode = self._modes(key)
        folder = self._path(key).parent
        self.root.mkdir(parents=True, exist_ok=True)
        for d in (folder.parent, folder):
            try:
                d.mkdir(mode=dir_mode)
            except FileExistsError:
                pass
            os.chmod(d, dir_mode)  # mkdir's mode is filtered by the umask
        return folder

    @contextlib.contextmanager
    def _locked(self, folder: Path):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write_atomic(self, dest: Path, mode: int, fill) -> None:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # the interface
    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            meta = json.loads(self._sidecar(path).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StorageError(f"unreadable metadata for {key}: {e}") from e
        if not path.exists():
            return None
        return StoredObject(key=key, bytes=int(meta["bytes"]), sha256=meta["sha256"],
                            content_type=meta["content_type"], tags=dict(meta.get("tags") or {}))

    def put_file(self, key: str, path: Path, *, content_type: str, tags: dict[str, str],
                 replace: bool = False) -> StoredObject:
        validate_key(key)
        try:
            sha, size = file_sha256(path)
            folder = self._ensure_folder(key)
            file_mode, _ = self._modes(key)
            dest = self._path(key)
            with self._locked(folder):
                existing = self.head(key)
                if existing is not None and not replace:
                    if existing.sha256 == sha:
                        return existing
                    raise ObjectExists(f"{key} already holds different bytes (sha256 {existing.sha256})")

                def copy(out: BinaryIO) -> None:
                    with open(path, "rb") as src:
                        while chunk := src.read(HASH_CHUNK):
                            out.write(chunk)

                self._write_atomic(dest, file_mode, copy)
                stored = StoredObject(key=key, bytes=size, sha256=sha, content_type=content_type,
                                      tags=dict(tags))
                meta = json.dumps({"bytes": size, "sha256": sha, "content_type": content_type,
                                   "tags": dict(tags)}, sort_keys=True).encode()
                self._write_atomic(self._sidecar(dest), file_mode, lambda out: out.write(meta))
                self._fsync_dir(folder)
                return stored
        except OSError as e:
            raise StorageError(f"cannot store {key}: {e}") from e

    def get_file(self, key: str, dest: Path) -> StoredObject:
        obj = self.head(key)
        if obj is None:
            raise KeyError(key)
        dest = Path(dest)
        digest = hashlib.sha256()
        try:
            def copy(out: BinaryIO) -> None:
                with open(self._path(key), "rb") as src:
                    while chunk := src.read(HASH_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != obj.sha256:
                    raise StorageError(f"{key}: bytes do not match the recorded sha256")

            dest.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomic(dest, 0o600, copy)
        except FileNotFoundError as e:
            raise KeyError(key) from e
        except OSError as e:
            raise StorageError(f"cannot read {key}: {e}") from e
        return obj

    def iter_bytes(self, key: str, *, start: int = 0, end: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]:
        # Opened here, not inside the generator, so an absent key raises KeyError at the call,
        # before an HTTP response has started.
        check_range(start, end)
        if self.head(key) is None:
            raise KeyError(key)
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError as e:
            raise KeyError(key) from e
        except OSError as e:
            raise StorageError(f"cannot read {key}: {e}") from e
        return _read_range(f, start, end, chunk_size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        folder = path.parent
        if not folder.exists():
            return
        try:
            with self._locked(folder):
                # sidecar first: without it the object no longer exists, even if the unlink below fails
                for p in (self._sidecar(path), path):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        except FileNotFoundError:
            return
        except OSError as e:
            raise StorageError(f"cannot delete {key}: {e}") from e


def _read_range(f: BinaryIO, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        remaining = None if end is None else end - start + 1
        while remaining is None or remaining > 0:
            chunk = f.read(chunk_size if remaining is None else min(chunk_size, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
