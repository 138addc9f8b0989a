"""Object storage for uploads, originals and agency copies: one interface, two backends chosen by URL.

`open_store(url, data_dir)` picks the backend from `MEDIASAN_STORAGE_URL`:

* none                → a local directory, `{data_dir}/store`
* `file:///abs/path`  → a local directory at that absolute path
* `s3://PREFIX?endpoint_url=http://127.0.0.1:9000&region=us-east-1`
                      → three S3 buckets, `PREFIX-incoming`, `PREFIX-restricted`, `PREFIX-agency`.
  Query options (all optional): `endpoint_url` (MinIO, moto, another S3-compatible store),
  `region` (default: the AWS config chain, else us-east-1), `addressing_style` (`path` when an
  endpoint_url is given, else `auto`), `multipart_threshold_mib` (64) and `part_size_mib` (16).
  Credentials come from the standard AWS chain (environment, ~/.aws, instance role), never the URL,
  so that a URL can be logged.

Keys have three areas and derive from the upload id, so a retried job writes the same keys:
`incoming/{upload_id}/upload`, `restricted/{upload_id}/original{.ext}`, `agency/{upload_id}/media{.ext}`.
Writes are conditional creates: the same bytes again are harmless (a retried job), different bytes
raise `ObjectExists` unless the caller says `replace=True` (a reprocess).
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

AREAS = ("incoming", "restricted", "agency")
# Areas whose objects carry a location or an unsanitized file: private to the service's own user.
PRIVATE_AREAS = frozenset({"incoming", "restricted"})

_KEY_RE = re.compile(r"^(incoming|restricted|agency)/[A-Za-z0-9_-]{1,64}/[A-Za-z0-9._-]{1,64}$")
_SIDECAR_SUFFIX = ".meta.json"
_HASH_CHUNK = 1 << 20


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
    if name.startswith(".") or name.endswith(_SIDECAR_SUFFIX):
        raise ValueError(f"not a storage key: {key!r}")
    return key


def key_area(key: str) -> str:
    return validate_key(key).split("/", 1)[0]


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in bounded chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"bad byte range {start}-{end}")


def open_store(url: str | None, data_dir: Path) -> Store:
    """The store a URL names; None means the embedded default under the data folder."""
    if not url:
        return LocalStore(Path(data_dir) / "store")
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file storage URL must be file:///absolute/path, not {url!r}")
        root = Path(unquote(parts.path))
        if not root.is_absolute():
            raise ValueError(f"file storage URL must name an absolute path: {url!r}")
        return LocalStore(root)
    if parts.scheme == "s3":
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return S3Store.from_options(parts.netloc, options)
    raise ValueError(f"unsupported storage URL scheme {parts.scheme!r} (use file:// or s3://)")


# --------------------------------------------------------------------------------------------- local

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
        return path.with_name(path.name + _SIDECAR_SUFFIX)

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
                        while chunk := src.read(_HASH_CHUNK):
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
                    while chunk := src.read(_HASH_CHUNK):
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
        _check_range(start, end)
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


# ------------------------------------------------------------------------------------------------ s3

_BUCKET_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,50}[a-z0-9]$")


class S3Store:
    """Three buckets, one per area, so that a bucket policy or IAM grant can keep originals
    (`PREFIX-restricted`) apart from agency copies (`PREFIX-agency`).

    Each object carries its access tags (set in the same PutObject, so no object is ever untagged),
    its sha256 in user metadata `sha256` and, where S3 supports it, a server-verified ChecksumSHA256.
    Conditional create uses `If-None-Match: *` (AWS since 2024, MinIO, moto 5); a store that answers
    501 NotImplemented falls back to head-then-put. Files over `multipart_threshold` go up as a
    multipart upload read one part at a time (bounded memory), completed with the same condition —
    boto3's `upload_file` cannot pass If-None-Match, which is why the parts are uploaded here.
    """

    def __init__(self, prefix: str, *, client, multipart_threshold: int = 64 << 20,
                 part_size: int = 16 << 20):
        if not _BUCKET_PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"S3 bucket prefix must be 3-52 lowercase letters, digits, '-' or '.': {prefix!r}")
        if part_size < 5 << 20:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.prefix = prefix
        self.client = client
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._conditional_writes = True

    @classmethod
    def from_options(cls, prefix: str, options: dict[str, str]) -> "S3Store":
        from botocore.config import Config

        endpoint_url = options.get("endpoint_url") or None
        style = options.get("addressing_style") or ("path" if endpoint_url else "auto")
        session = _boto_session()
        region = options.get("region") or session.region_name or "us-east-1"
        client = session.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"},
                          connect_timeout=10, read_timeout=60))
        return cls(prefix, client=client,
                   multipart_threshold=int(float(options.get("multipart_threshold_mib", 64)) * (1 << 20)),
                   part_size=int(float(options.get("part_size_mib", 16)) * (1 << 20)))

    def __repr__(self) -> str:
        return f"S3Store({self.prefix!r})"

    def bucket(self, area: str) -> str:
        return f"{self.prefix}-{area}"

    def _locate(self, key: str) -> tuple[str, str]:
        """(bucket, object key inside it): the area picks the bucket, the rest is the object key."""
        area, rest = validate_key(key).split("/", 1)
        return self.bucket(area), rest

    def ensure_buckets(self) -> None:
        """Create the three buckets if absent, with public access blocked. Idempotent."""
        region = self.client.meta.region_name
        for area in AREAS:
            name = self.bucket(area)
            kwargs = {"Bucket": name}
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self.client.create_bucket(**kwargs)
            except self._client_error() as e:
                if _error_code(e) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StorageError(f"cannot create bucket {name}: {e}") from e
            except self._boto_error() as e:
                raise StorageError(f"cannot create bucket {name}: {e}") from e
            with contextlib.suppress(self._client_error()):
                self.client.put_public_access_block(
                    Bucket=name, PublicAccessBlockConfiguration={
                        "BlockPublicAcls": True, "IgnorePublicAcls": True,
                        "BlockPublicPolicy": True, "RestrictPublicBuckets": True})

    @staticmethod
    def _client_error():
        from botocore.exceptions import ClientError
        return ClientError

    @staticmethod
    def _boto_error():
        from botocore.exceptions import BotoCoreError
        return BotoCoreError

    def head(self, key: str) -> StoredObject | None:
        bucket, name = self._locate(key)
        try:
            meta = self.client.head_object(Bucket=bucket, Key=name)
            tagging = self.client.get_object_tagging(Bucket=bucket, Key=name)
        except self._client_error() as e:
            if _error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"cannot head {key}: {e}") from e
        except self._boto_error() as e:
            raise StorageError(f"cannot head {key}: {e}") from e
        return StoredObject(
            key=key, bytes=int(meta["ContentLength"]), sha256=meta.get("Metadata", {}).get("sha256", ""),
            content_type=meta.get("ContentType", "application/octet-stream"),
            tags={t["Key"]: t["Value"] for t in tagging.get("TagSet", [])})

    def put_file(self, key: str, path: Path, *, content_type: str, tags: dict[str, str],
                 replace: bool = False) -> StoredObject:
        bucket, name = self._locate(key)
        sha, size = file_sha256(path)
        stored = StoredObject(key=key, bytes=size, sha256=sha, content_type=content_type, tags=dict(tags))
        if not replace:
            existing = self.head(key)
            if existing is not None:
                return self._same_or_exists(existing, sha)
        common = {"Bucket": bucket, "Key": name, "ContentType": content_type,
                  "Tagging": urlencode(tags), "Metadata": {"sha256": sha}}
        conditional = not replace and self._conditional_writes
        try:
            try:
                if size > self.multipart_threshold:
                    self._put_multipart(path, common, conditional=conditional)
                else:
                    self._put_single(path, sha, common, conditional=conditional)
            except self._client_error() as e:
                code = _error_code(e)
                if conditional and code in ("NotImplemented", "501"):
                    # this store cannot do conditional writes: head-then-put is the best it allows
                    self._conditional_writes = False
                    return self.put_file(key, path, content_type=content_type, tags=tags, replace=replace)
                if code in ("PreconditionFailed", "412"):
                    # another writer created the key between our head and our put
                    existing = self.head(key)
                    if existing is None:
                        raise StorageError(f"{key}: conditional write refused, object vanished") from e
                    return self._same_or_exists(existing, sha)
                raise
        except self._client_error() as e:
            raise StorageError(f"cannot store {key}: {e}") from e
        except (self._boto_error(), OSError) as e:
            raise StorageError(f"cannot store {key}: {e}") from e
        return stored

    @staticmethod
    def _same_or_exists(existing: StoredObject, sha: str) -> StoredObject:
        if existing.sha256 == sha:
            return existing
        raise ObjectExists(f"{existing.key} already holds different bytes (sha256 {existing.sha256})")

    def _put_single(self, path: Path, sha: str, common: dict, *, conditional: bool) -> None:
        extra = {"IfNoneMatch": "*"} if conditional else {}
        with open(path, "rb") as body:
            self.client.put_object(Body=body, ChecksumSHA256=_b64(bytes.fromhex(sha)), **common, **extra)

    def _put_multipart(self, path: Path, common: dict, *, conditional: bool) -> None:
        bucket, name = common["Bucket"], common["Key"]
        upload_id = self.client.create_multipart_upload(ChecksumAlgorithm="SHA256", **common)["UploadId"]
        try:
            parts = []
            with open(path, "rb") as f:
                number = 1
                while data := f.read(self.part_size):
                    checksum = _b64(hashlib.sha256(data).digest())
                    response = self.client.upload_part(
                        Bucket=bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data,
                        ChecksumSHA256=checksum)
                    parts.append({"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum})
                    number += 1
            extra = {"IfNoneMatch": "*"} if conditional else {}
            self.client.complete_multipart_upload(
                Bucket=bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=bucket, Key=name, UploadId=upload_id)
            raise

    def get_file(self, key: str, dest: Path) -> StoredObject:
        obj = self.head(key)
        if obj is None:
            raise KeyError(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self.iter_bytes(key):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if obj.sha256 and digest.hexdigest() != obj.sha256:
                raise StorageError(f"{key}: bytes do not match the recorded sha256")
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return obj

    def iter_bytes(self, key: str, *, start: int = 0, end: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]:
        # The GET is sent here, not inside the generator, so an absent key raises KeyError at the call.
        _check_range(start, end)
        bucket, name = self._locate(key)
        kwargs = {"Bucket": bucket, "Key": name}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            body = self.client.get_object(**kwargs)["Body"]
        except self._client_error() as e:
            code = _error_code(e)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(key) from e
            if code in ("InvalidRange", "416"):
                return iter(())  # the range starts past the end: nothing to send
            raise StorageError(f"cannot read {key}: {e}") from e
        except self._boto_error() as e:
            raise StorageError(f"cannot read {key}: {e}") from e
        return _stream_body(body, key, chunk_size)

    def delete(self, key: str) -> None:
        bucket, name = self._locate(key)
        try:
            self.client.delete_object(Bucket=bucket, Key=name)
        except self._client_error() as e:
            if _error_code(e) in ("404", "NoSuchKey", "NoSuchBucket"):
                return
            raise StorageError(f"cannot delete {key}: {e}") from e
        except self._boto_error() as e:
            raise StorageError(f"cannot delete {key}: {e}") from e


@functools.lru_cache(maxsize=1)
def _boto_session():
    """One boto3 session a process: each new session reloads the S3 service model (about a second),
    and credentials resolve once through the standard chain."""
    import boto3
    return boto3.session.Session()


def _stream_body(body, key: str, chunk_size: int) -> Iterator[bytes]:
    from botocore.exceptions import BotoCoreError
    try:
        yield from body.iter_chunks(chunk_size)
    except BotoCoreError as e:
        raise StorageError(f"reading {key} broke off: {e}") from e
    finally:
        body.close()


def _error_code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
