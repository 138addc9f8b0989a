"""Ogg Vorbis, Ogg Opus and Ogg FLAC (.ogg, .opus, .oga): empty the comment header, keep the audio.

An Ogg file is a run of pages ("OggS", flags, granule position, serial, sequence, CRC, lacing
table, body) carrying the packets of one or more logical streams. The tags of all three codecs sit
in one header packet (a Vorbis comment: vendor string, then NAME=value pairs, cover art as
METADATA_BLOCK_PICTURE); Ogg FLAC may add more header packets (PICTURE, APPLICATION blocks). The
copy replaces that packet with an empty comment (empty vendor too: it names the encoder software)
and drops the other FLAC metadata packets; mutagen rewrites the header pages and renumbers and
re-checksums the pages that follow, whose audio packets and granule positions are untouched.

Every page is checked before anything is built: its CRC (a page that fails it is ``corrupt``: Ogg
readers drop such pages, so the copy would silently lose audio) and its sequence number (one more
than the page before: a gap means lost or spliced pages). The copy ends with the last whole page;
whatever follows it goes, but another page after damage is ``corrupt``, not silently cut off.

Only a single logical stream of one of those codecs is accepted: Theora video, Speex, Skeleton
tracks and chained or multiplexed files are ``unsupported_format``.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.formats.av.audio_inspect import (CopyWalk, check_frames_decode, mapped_file, reader_findings, release,
                                             write_range)
from worker.formats.base import Format, Limits, Rebuilt
from worker.location import Found

CAPTURE = b"OggS"
PAGE_HEADER = struct.Struct("<4sBBqIIIB")     # capture, version, flags, granule, serial, sequence, crc, segments
BOS = 0x02
# header packets worth reading before giving up on finding the end of the headers (cover art in a
# comment packet can be large, but not this large)
MAX_HEADER_BYTES = 64 * 1024 * 1024
RELEASE_PAGES = 1024                          # Ogg pages walked between two releases of the memory behind

EMPTY_VORBIS_COMMENT = b"\x03vorbis" + struct.pack("<II", 0, 0) + b"\x01"   # vendor "", 0 comments, framing bit
EMPTY_OPUS_TAGS = b"OpusTags" + struct.pack("<II", 0, 0)
FLAC_VORBIS_COMMENT = 4
FLAC_LAST_BLOCK = 0x80
EMPTY_FLAC_COMMENT_BLOCK = bytes([FLAC_VORBIS_COMMENT | FLAC_LAST_BLOCK]) + (8).to_bytes(3, "big") + struct.pack("<II", 0, 0)


class Codec(NamedTuple):
    name: str
    media_type: str
    extension: str
    magic: bytes                # how the identification packet starts


CODECS = (
    Codec("vorbis", "audio/ogg", ".ogg", b"\x01vorbis"),
    Codec("opus", "audio/ogg", ".opus", b"OpusHead"),
    Codec("flac", "audio/ogg", ".oga", b"\x7fFLAC"),
)


class Page(NamedTuple):
    offset: int
    flags: int
    granule: int                # the granule position: samples up to the last packet ending here (-1: none ends here)
    serial: int
    size: int                   # header, lacing table and body
    body: int                   # where the body starts


def iter_pages(data, start: int = 0) -> Iterator[Page]:
    """Walk pages from ``start`` while they are whole; stops (without error) at anything else."""
    pos = start
    while pos + PAGE_HEADER.size <= len(data) and data[pos:pos + 4] == CAPTURE:
        _, version, flags, granule, serial, _, _, segments = PAGE_HEADER.unpack_from(data, pos)
        body = pos + PAGE_HEADER.size + segments
        if version != 0 or body > len(data):
            return
        size = body - pos + sum(data[pos + PAGE_HEADER.size:body])
        if pos + size > len(data):
            return
        yield Page(offset=pos, flags=flags, granule=granule, serial=serial, size=size, body=body)
        pos += size


def first_packet_codec(head: bytes) -> Codec | None:
    """The codec of the stream whose BOS page starts the file, from its identification packet."""
    page = next(iter_pages(head), None)
    if page is None or not page.flags & BOS:
        return None
    packet = bytes(head[page.body:page.body + 16])
    return next((c for c in CODECS if packet.startswith(c.magic)), None)


def accept(head: bytes) -> bool:
    return first_packet_codec(head) is not None


def locate(path: Path, limits: Limits) -> Found:
    return Found()


# Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, no initial or final xor) computed with zlib's
# reflected CRC-32 on bit-reversed bytes, so that checking every page stays C-speed
_REVERSED_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
CRC_FIELD = slice(22, 26)


def page_crc(page: bytes) -> int:
    """The CRC-32 of one whole page as Ogg defines it (its CRC field taken as zero)."""
    page = page[:CRC_FIELD.start] + bytes(4) + page[CRC_FIELD.stop:]
    raw = zlib.crc32(page.translate(_REVERSED_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def check_page(data, page: Page, expected_sequence: int | None) -> int:
    """Check one page's CRC and sequence number; returns its sequence number."""
    raw = bytes(data[page.offset:page.offset + page.size])
    (sequence, crc) = struct.unpack_from("<II", raw, 18)
    if page_crc(raw) != crc:
        raise corrupt(f"the Ogg page at byte {page.offset} fails its CRC check")
    if expected_sequence is not None and sequence != expected_sequence:
        raise corrupt(f"Ogg page sequence jumps from {expected_sequence - 1} to {sequence} at byte {page.offset}")
    return sequence


def _stream_extent(data) -> tuple[int, int, int]:
    """(end of the last whole page, number of pages, last granule position), every page checked;
    raises for a second logical stream, a bad CRC, a gap in the sequence numbers and a page after damage."""
    serial, end, count, sequence, granule = None, 0, 0, None, -1
    for page in iter_pages(data):
        if count and count % RELEASE_PAGES == 0:
            release(data, 0, page.offset)      # the pages behind the walk (a long recording is not held)
        if serial is None:
            serial = page.serial
        elif page.serial != serial or page.flags & BOS:
            raise unsupported("Ogg file with more than one logical stream (chained or multiplexed)")
        sequence = check_page(data, page, None if sequence is None else sequence + 1)
        end, count = page.offset + page.size, count + 1
        granule = page.granule if page.granule >= 0 else granule
    if count == 0:
        raise truncated("no whole Ogg page")
    # the last page may be cut off by the end of the file; any later page means damage in between
    later = data.find(CAPTURE, end + (len(CAPTURE) if data[end:end + 4] == CAPTURE else 0))
    if later >= 0:
        raise corrupt(f"damaged Ogg data at byte {end}, followed by more pages")
    return end, count, granule


def _seconds(codec: Codec, identification: bytes, granule: int) -> float | None:
    """The stream's duration from its last granule position and its identification packet's sample
    rate (Opus: 48 kHz, less the pre-skip); None when they do not give one."""
    if granule < 0 or len(identification) < 30:
        return None
    if codec.name == "vorbis":
        rate = int.from_bytes(identification[12:16], "little")
    elif codec.name == "opus":
        rate, granule = 48000, granule - int.from_bytes(identification[10:12], "little")
    else:   # Ogg FLAC: STREAMINFO's 20-bit sample rate, after the mapping header and the block header
        rate = int.from_bytes(identification[27:30], "big") >> 4
    return granule / rate if rate and granule >= 0 else None


def _read_headers(fileobj, codec: Codec):
    """The pages holding the header packets and the packets themselves.

    Vorbis has 3 header packets, Opus 2, Ogg FLAC 1 + the count its first packet gives. The last
    header must end a page (the specs require audio to start on a fresh page)."""
    from mutagen.ogg import OggPage, error as OggError

    fileobj.seek(0)
    try:
        pages = [OggPage(fileobj)]
        first = pages[0].packets[0]
        if codec.name == "vorbis":
            wanted = 3
        elif codec.name == "opus":
            wanted = 2
        else:
            if len(first) < 13 or first[9:13] != b"fLaC":
                raise corrupt("Ogg FLAC identification packet without a fLaC marker")
            wanted = 1 + int.from_bytes(first[7:9], "big")
            if wanted == 1:
                raise unsupported("Ogg FLAC with an unknown number of header packets")
        read = pages[0].size
        while True:
            packets = OggPage.to_packets(pages, strict=False)
            complete = len(packets) - (0 if pages[-1].complete else 1)
            if complete >= wanted:
                break
            if read > MAX_HEADER_BYTES:
                raise too_large(f"Ogg header packets larger than {MAX_HEADER_BYTES} bytes")
            pages.append(OggPage(fileobj))
            read += pages[-1].size
    except (OggError, EOFError, struct.error) as e:
        raise truncated(f"the Ogg header pages end early: {e}") from None
    except ValueError as e:
        # mutagen's packet assembly refuses pages out of sequence with a plain ValueError
        raise corrupt(f"the Ogg header pages do not assemble: {e}") from None
    if len(packets) != wanted or not pages[-1].complete:
        raise unsupported("Ogg audio data shares a page with the header packets")
    return pages, packets


def _clean_packets(codec: Codec, packets: list[bytes]) -> tuple[list[bytes], list[str]]:
    """The header packets for the copy, and what was removed."""
    if codec.name == "vorbis":
        if not packets[1].startswith(b"\x03vorbis") or not packets[2].startswith(b"\x05vorbis"):
            raise corrupt("Vorbis header packets out of order")
        return [packets[0], EMPTY_VORBIS_COMMENT, packets[2]], [_describe_comment(packets[1][7:], "Vorbis comment")]
    if codec.name == "opus":
        if not packets[1].startswith(b"OpusTags"):
            raise corrupt("Opus comment header missing")
        return [packets[0], EMPTY_OPUS_TAGS], [_describe_comment(packets[1][8:], "OpusTags")]
    removed = []
    for packet in packets[1:]:
        if not packet:
            raise corrupt("empty Ogg FLAC metadata packet")
        removed.append(f"FLAC metadata block type {packet[0] & 0x7F} ({len(packet)} bytes)")
    first = bytearray(packets[0])
    first[7:9] = (1).to_bytes(2, "big")        # one header packet follows: the empty comment
    first[13] &= 0x7F                          # STREAMINFO is not the last metadata block
    return [bytes(first), EMPTY_FLAC_COMMENT_BLOCK], removed


def _describe_comment(body: bytes, what: str) -> str:
    try:
        vendor_length = struct.unpack_from("<I", body, 0)[0]
        (count,) = struct.unpack_from("<I", body, 4 + vendor_length)
        return f"{what} (vendor string, {count} comments)"
    except struct.error:
        return what


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    from mutagen.ogg import OggPage

    with mapped_file(src, limits) as data:
        codec = first_packet_codec(bytes(data[:65536]))
        if codec is None:
            raise unsupported("the first Ogg page is not a Vorbis, Opus or FLAC identification header")
        end, _, _ = _stream_extent(data)
        removed = [f"data after the last Ogg page ({len(data) - end} bytes)"] if end < len(data) else []
        with open(dst, "wb") as out:
            write_range(out, data, 0, end)
    with open(dst, "r+b") as f:
        old_pages, packets = _read_headers(f, codec)
        if old_pages[-1].offset + old_pages[-1].size >= end:
            raise truncated("the Ogg file ends after its header packets: no audio")
        new_packets, dropped = _clean_packets(codec, packets)
        removed = dropped + removed
        serial = old_pages[0].serial
        first_page = OggPage.from_packets(new_packets[:1], sequence=0)
        rest = OggPage.from_packets(new_packets[1:], sequence=1)
        new_pages = first_page + rest
        for page in new_pages:
            page.serial, page.position = serial, 0
        new_pages[0].first = True
        for page in new_pages:
            if not page.complete and len(page.packets) == 1:
                page.position = -1          # no packet ends on this page
        OggPage.replace(f, old_pages, new_pages)
    check_frames_decode(dst, limits)
    return Rebuilt(format="ogg", media_type=codec.media_type, extension=codec.extension, removed=tuple(removed))


def walk_copy(path: Path) -> tuple[CopyWalk, Codec | None]:
    """One logical stream, whole pages to the last byte, the empty comment and nothing besides; the
    duration from the last granule position; and the codec, which names mutagen's reader."""
    findings: list[str] = []
    with mapped_file(path) as data:
        codec = first_packet_codec(bytes(data[:65536]))
        if codec is None:
            return CopyWalk(["the copy does not start with a Vorbis, Opus or FLAC Ogg stream"], None), None
        try:
            end, _, granule = _stream_extent(data)
        except SanitizeError as e:
            return CopyWalk([e.message], None), codec
        first = next(iter_pages(data))
        duration = _seconds(codec, bytes(data[first.body:first.body + 32]), granule)
        if end != len(data):
            findings.append(f"{len(data) - end} bytes after the last Ogg page")
    with open(path, "rb") as f:
        try:
            _, packets = _read_headers(f, codec)
        except SanitizeError as e:
            return CopyWalk(findings + [f"Ogg headers: {e.message}"], duration), codec
    expected = {"vorbis": EMPTY_VORBIS_COMMENT, "opus": EMPTY_OPUS_TAGS, "flac": EMPTY_FLAC_COMMENT_BLOCK}[codec.name]
    if packets[1] != expected:
        findings.append(f"the {codec.name} comment header is not the empty one")
    if codec.name == "flac" and len(packets) != 2:
        findings.append(f"{len(packets) - 2} Ogg FLAC metadata blocks besides the comment")
    return CopyWalk(findings, duration), codec


def inspect(path: Path) -> list[str]:
    import mutagen.oggflac
    import mutagen.oggopus
    import mutagen.oggvorbis

    try:
        walked, codec = walk_copy(path)
    except SanitizeError as e:
        return [f"the copy cannot be read: {e.message}"]
    reader = {"vorbis": mutagen.oggvorbis.OggVorbis, "opus": mutagen.oggopus.OggOpus,
              "flac": mutagen.oggflac.OggFLAC}[codec.name] if codec else None
    return walked.findings + reader_findings(path, reader, walked.duration)


FORMATS = [
    Format(name="ogg", kind="audio", media_type="audio/ogg", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".ogg", ".opus", ".oga")),
]
