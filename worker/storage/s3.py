"""The S3 store (MinIO, AWS, any S3-compatible service): one bucket an area, tags in the PutObject."""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

from worker.storage.base import (AREAS, ObjectExists, StorageError, StoredObject, check_range, file_sha256,
                                 validate_key)


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

    def missing_buckets(self) -> list[str]:
        """The area buckets that do not exist (HeadBucket each); StorageError when the store does not answer."""
        missing = []
        for area in AREAS:
            name = self.bucket(area)
            try:
                self.client.head_bucket(Bucket=name)
            except self._client_error() as e:
                if _error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(f"cannot reach bucket {name}: {e}") from e
                missing.append(name)
            except self._boto_error() as e:
                raise StorageError(f"cannot reach bucket {name}: {e}") from e
        return missing

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
        check_range(start, end)
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


def _boto_session():
    """One boto3 session a process: each new session reloads the S3 service model (about a second),
    and credentials resolve once through the standard chain. Keyed by pid because boto3 sessions
    and clients are not fork-safe: a forked child builds its own."""
    return _boto_session_of(os.getpid())


@functools.lru_cache(maxsize=1)
def _boto_session_of(pid: int):
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
