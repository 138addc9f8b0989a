"""The shared RIFF/IFF chunk walker: sizes bounded, pad bytes, both byte orders."""
from __future__ import annotations

import pytest

from worker.errors import SanitizeError
from worker.formats.walkers.iff import chunk, iter_chunks


def test_walks_little_endian_chunks_with_pad_bytes():
    data = chunk(b"fmt ", b"abc") + chunk(b"data", b"wxyz")
    assert len(chunk(b"fmt ", b"abc")) == 12   # 8 header + 3 payload + 1 pad
    found = list(iter_chunks(data, 0, len(data)))
    assert [(c.id, c.offset, c.data_offset, c.size) for c in found] == [(b"fmt ", 0, 8, 3), (b"data", 12, 20, 4)]
    assert data[found[1].data_offset:found[1].data_offset + found[1].size] == b"wxyz"


def test_walks_big_endian_chunks():
    data = b"junk" + chunk(b"COMM", b"\x00\x01", big_endian=True) + chunk(b"SSND", b"12345", big_endian=True)
    assert data[8:12] == b"\x00\x00\x00\x02"
    found = list(iter_chunks(data, 4, len(data), big_endian=True))
    assert [(c.id, c.size) for c in found] == [(b"COMM", 2), (b"SSND", 5)]


def test_missing_final_pad_byte_is_tolerated():
    data = chunk(b"data", b"abc")[:-1]
    assert [c.size for c in iter_chunks(data, 0, len(data))] == [3]


@pytest.mark.parametrize("data", [
    chunk(b"data", b"abcd")[:-1],                   # payload cut short
    chunk(b"data", b"ab") + b"LIS",                  # header cut short
    b"data\xff\xff\xff\xff" + b"x" * 16,             # size lies
])
def test_sizes_running_past_the_end_are_truncated(data):
    with pytest.raises(SanitizeError) as e:
        list(iter_chunks(data, 0, len(data)))
    assert e.value.code == "truncated"


def test_end_past_the_data_is_truncated():
    data = chunk(b"data", b"ab")
    with pytest.raises(SanitizeError) as e:
        list(iter_chunks(data, 0, len(data) + 10))
    assert e.value.code == "truncated"


def test_end_bounds_the_walk():
    data = chunk(b"AAAA", b"1234") + chunk(b"BBBB", b"5678")
    assert [c.id for c in iter_chunks(data, 0, 12)] == [b"AAAA"]
