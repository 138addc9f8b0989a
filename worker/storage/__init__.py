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

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from worker.storage.base import (AREAS, PRIVATE_AREAS, ObjectExists, StorageError, Store, StoredObject,
                                 file_sha256, key_area, validate_key)
from worker.storage.local import LocalStore
from worker.storage.s3 import S3Store


__all__ = ["AREAS", "PRIVATE_AREAS", "LocalStore", "ObjectExists", "S3Store", "StorageError", "Store", "StoredObject",
           "file_sha256", "key_area", "open_store", "validate_key"]


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
