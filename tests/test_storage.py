"""The storage contract, run against both backends: a local folder and S3 (moto's server over HTTP)."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from tests.moto_s3 import moto_endpoint, s3_store, s3_url  # noqa: F401  (fixtures)
from worker.storage import (LocalStore, ObjectExists, S3Store, StorageError, StoredObject, open_store,
                            validate_key)

TAGS = {"variant": "original", "access": "restricted", "complaint": "C-1001"}


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(f"file://{tmp_path / 'store'}", tmp_path)
    return request.getfixturevalue("s3_store")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_head_get_round_trip(store, tmp_path):
    data = os.urandom(50_000)
    key = "restricted/u-1/original.jpg"
    put = store.put_file(key, write(tmp_path / "in.jpg", data), content_type="image/jpeg", tags=TAGS)
    assert put == StoredObject(key=key, bytes=len(data), sha256=sha(data), content_type="image/jpeg", tags=TAGS)
    assert store.head(key) == put
    got = store.get_file(key, tmp_path / "out" / "copy.jpg")
    assert got == put
    assert (tmp_path / "out" / "copy.jpg").read_bytes() == data


def test_head_and_get_of_absent_key(store, tmp_path):
    assert store.head("agency/nope/media.jpg") is None
    with pytest.raises(KeyError):
        store.get_file("agency/nope/media.jpg", tmp_path / "x")
    with pytest.raises(KeyError):
        store.iter_bytes("agency/nope/media.jpg")


def test_same_bytes_twice_is_harmless(store, tmp_path):
    key = "agency/u-2/media.png"
    src = write(tmp_path / "a.png", b"\x89PNG same bytes")
    first = store.put_file(key, src, content_type="image/png", tags={"access": "agency"})
    # a retried job may carry other tags; the stored object is left as it was
    again = store.put_file(key, src, content_type="image/png", tags={"access": "other"})
    assert again == first
    assert store.head(key).tags == {"access": "agency"}


def test_different_bytes_raise_unless_replace(store, tmp_path):
    key = "agency/u-3/media.png"
    store.put_file(key, write(tmp_path / "a", b"first"), content_type="image/png", tags={"v": "1"})
    with pytest.raises(ObjectExists):
        store.put_file(key, write(tmp_path / "b", b"second"), content_type="image/png", tags={"v": "2"})
    assert store.head(key).sha256 == sha(b"first")
    assert isinstance(ObjectExists("x"), StorageError)  # a caller catching StorageError sees it too

    replaced = store.put_file(key, tmp_path / "b", content_type="image/webp", tags={"v": "2"}, replace=True)
    assert replaced.sha256 == sha(b"second")
    assert store.head(key) == replaced
    assert b"".join(store.iter_bytes(key)) == b"second"


def test_delete_is_idempotent(store, tmp_path):
    key = "incoming/u-4/upload"
    store.put_file(key, write(tmp_path / "u", b"upload"), content_type="application/octet-stream", tags={})
    store.delete(key)
    assert store.head(key) is None
    store.delete(key)
    store.delete("incoming/never/upload")
    # after a delete the key is free for different bytes
    store.put_file(key, write(tmp_path / "v", b"other"), content_type="application/octet-stream", tags={})
    assert store.head(key).sha256 == sha(b"other")


@pytest.mark.parametrize("start,end", [(0, None), (0, 0), (10, 19), (99_990, None), (5, 10_000_000),
                                       (99_999, 99_999)])
def test_iter_bytes_ranges(store, tmp_path, start, end):
    data = os.urandom(100_000)
    key = "agency/u-5/media.mp4"
    store.put_file(key, write(tmp_path / "v.mp4", data), content_type="video/mp4", tags={})
    got = b"".join(store.iter_bytes(key, start=start, end=end, chunk_size=4096))
    assert got == data[start:(None if end is None else end + 1)]


def test_iter_bytes_chunks_are_bounded(store, tmp_path):
    data = os.urandom(300_000)
    key = "agency/u-6/media.mp4"
    store.put_file(key, write(tmp_path / "v.mp4", data), content_type="video/mp4", tags={})
    chunks = list(store.iter_bytes(key, chunk_size=65536))
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= 65536
    assert b"".join(chunks) == data


def test_iter_bytes_rejects_backwards_range(store, tmp_path):
    store.put_file("agency/u-7/media", write(tmp_path / "x", b"abc"), content_type="x/y", tags={})
    with pytest.raises(ValueError):
        store.iter_bytes("agency/u-7/media", start=5, end=2)
    with pytest.raises(ValueError):
        store.iter_bytes("agency/u-7/media", start=-1)


def test_empty_file(store, tmp_path):
    key = "incoming/u-8/upload"
    obj = store.put_file(key, write(tmp_path / "e", b""), content_type="application/octet-stream", tags={})
    assert obj.bytes == 0 and obj.sha256 == sha(b"")
    assert b"".join(store.iter_bytes(key)) == b""


BAD_KEYS = [
    "", "restricted", "restricted/u-1", "restricted/u-1/", "/restricted/u-1/original",
    "restricted/../agency/x", "restricted/u-1/..", "restricted/u-1/.", "restricted/u-1/.hidden",
    "agency/u-1%2Foriginal/x", "agency/u-1/a%2Fb", "agency/%2e%2e/media", "agency/u-1/a/b",
    "other/u-1/media", "Agency/u-1/media", "agency/u 1/media", "agency/u-1/media\n",
    "agency/u-1/media.meta.json", "agency/" + "u" * 65 + "/media", "agency/u-1/" + "m" * 65,
    "agency/u.1/media", "agency\\u-1\\media",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_rejected(store, tmp_path, key):
    with pytest.raises(ValueError):
        validate_key(key)
    with pytest.raises(ValueError):
        store.put_file(key, write(tmp_path / "f", b"x"), content_type="x/y", tags={})
    with pytest.raises(ValueError):
        store.head(key)


def test_good_keys_accepted():
    for key in ("incoming/0f3a-B_9/upload", "restricted/u1/original.heic", "agency/u1/media.jpg"):
        assert validate_key(key) == key


def test_local_private_areas_are_owner_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    for key in ("restricted/u-9/original.jpg", "incoming/u-9/upload"):
        store.put_file(key, write(tmp_path / "f", b"secret"), content_type="image/jpeg", tags=TAGS)
        path = tmp_path / "store" / key
        for p in (path, path.with_name(path.name + ".meta.json")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        for d in (path.parent, path.parent.parent):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    agency = tmp_path / "store" / "agency/u-9/media.jpg"
    store.put_file("agency/u-9/media.jpg", write(tmp_path / "g", b"clean"), content_type="image/jpeg", tags={})
    assert stat.S_IMODE(agency.stat().st_mode) & 0o007 == 0  # never world-readable
    assert not [p for p in (tmp_path / "store").rglob(".*.tmp")]  # no temp files left behind


def test_local_detects_bytes_changed_under_it(tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_file("restricted/u-10/original", write(tmp_path / "f", b"good"), content_type="x/y", tags={})
    (tmp_path / "store/restricted/u-10/original").write_bytes(b"evil")
    with pytest.raises(StorageError):
        store.get_file("restricted/u-10/original", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_open_store_picks_backend(tmp_path, moto_endpoint):
    default = open_store(None, tmp_path)
    assert isinstance(default, LocalStore) and default.root == tmp_path / "store"
    assert isinstance(open_store(f"file://{tmp_path}/elsewhere", tmp_path), LocalStore)
    s3 = open_store(s3_url(moto_endpoint), tmp_path)
    assert isinstance(s3, S3Store) and s3.bucket("restricted").endswith("-restricted")
    for bad in ("file://relative/path", "ftp://x", "s3://UPPER?endpoint_url=http://127.0.0.1:1"):
        with pytest.raises(ValueError):
            open_store(bad, tmp_path)


def test_s3_buckets_are_separate_per_area(s3_store, tmp_path):
    s3_store.put_file("restricted/u-11/original.jpg", write(tmp_path / "f", b"orig"), content_type="image/jpeg",
                      tags=TAGS)
    client = s3_store.client
    restricted = client.list_objects_v2(Bucket=s3_store.bucket("restricted")).get("Contents", [])
    agency = client.list_objects_v2(Bucket=s3_store.bucket("agency")).get("Contents", [])
    assert [o["Key"] for o in restricted] == ["u-11/original.jpg"]
    assert agency == []
    tagging = client.get_object_tagging(Bucket=s3_store.bucket("restricted"), Key="u-11/original.jpg")
    assert {t["Key"]: t["Value"] for t in tagging["TagSet"]} == TAGS


def test_s3_conditional_put_is_refused_by_the_store(s3_store, tmp_path):
    """The store itself enforces the create-only write (If-None-Match: *), not only our head check."""
    from botocore.exceptions import ClientError
    s3_store.client.put_object(Bucket=s3_store.bucket("agency"), Key="u-12/media.jpg", Body=b"theirs")
    common = {"Bucket": s3_store.bucket("agency"), "Key": "u-12/media.jpg", "ContentType": "image/jpeg",
              "Tagging": "", "Metadata": {"sha256": sha(b"mine")}}
    with pytest.raises(ClientError) as refused:
        s3_store._put_single(write(tmp_path / "mine", b"mine"), sha(b"mine"), common, conditional=True)
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_racing_writers_one_wins(backend, tmp_path, request):
    """Workers racing on one key with different bytes: exactly one write lands, the others are told."""
    from concurrent.futures import ThreadPoolExecutor
    store = (LocalStore(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_store"))
    sources = [write(tmp_path / f"w{i}", f"writer {i}".encode() * 1000) for i in range(6)]
    for round_ in range(5):
        key = f"agency/race-{round_}/media"

        def attempt(src):
            try:
                return store.put_file(key, src, content_type="x/y", tags={})
            except ObjectExists:
                return None

        with ThreadPoolExecutor(len(sources)) as pool:
            results = list(pool.map(attempt, sources))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert store.head(key) == winners[0]
        assert hashlib.sha256(b"".join(store.iter_bytes(key))).hexdigest() == winners[0].sha256


def test_s3_multipart_for_large_files(s3_store, tmp_path):
    big = tmp_path / "big.mov"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        for _ in range(70):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    key = "restricted/u-13/original.mov"
    put = s3_store.put_file(key, big, content_type="video/quicktime", tags=TAGS)
    head = s3_store.head(key)
    assert head == put
    assert head.bytes == 70 << 20 and head.sha256 == digest.hexdigest()
    raw = s3_store.client.head_object(Bucket=s3_store.bucket("restricted"), Key="u-13/original.mov")
    assert "-" in raw["ETag"]  # a multipart ETag: "<md5 of part md5s>-<parts>"
    # the same big file again is harmless; a different one is refused
    assert s3_store.put_file(key, big, content_type="video/quicktime", tags=TAGS) == put
    with open(big, "r+b") as f:
        f.seek(5 << 20)
        f.write(b"changed")
    with pytest.raises(ObjectExists):
        s3_store.put_file(key, big, content_type="video/quicktime", tags=TAGS)
    out = s3_store.get_file(key, tmp_path / "back.mov")
    assert out.sha256 == digest.hexdigest()
    assert hashlib.sha256((tmp_path / "back.mov").read_bytes()).hexdigest() == digest.hexdigest()


def test_s3_unreachable_is_storage_error(tmp_path, moto_endpoint):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = open_store(f"s3://mediasan-down?endpoint_url=http://127.0.0.1:{port}&region=us-east-1", tmp_path)
    store.client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StorageError):
        store.put_file("agency/u-14/media", write(tmp_path / "f", b"x"), content_type="x/y", tags={})
