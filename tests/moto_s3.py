"""A real S3 endpoint for tests: moto's server mode over HTTP on 127.0.0.1, one per test session.

Tests talk to it through boto3 exactly as they would to MinIO or AWS: nothing is patched in-process.
Import the fixtures into a test module: `from tests.moto_s3 import moto_endpoint, s3_store`.
"""
from __future__ import annotations

import itertools
import os
import socket

import pytest

_prefixes = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """The URL of a moto S3 server on 127.0.0.1, with throwaway credentials in the environment."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_url(endpoint: str, **options) -> str:
    """A fresh storage URL (own bucket prefix) against the moto endpoint."""
    from urllib.parse import urlencode
    prefix = f"mediasan-t{os.getpid()}-{next(_prefixes)}"
    query = urlencode({"endpoint_url": endpoint, "region": "us-east-1", **options})
    return f"s3://{prefix}?{query}"


@pytest.fixture
def s3_store(moto_endpoint, tmp_path):
    from worker.storage import open_store
    store = open_store(s3_url(moto_endpoint), tmp_path)
    store.ensure_buckets()
    return store
