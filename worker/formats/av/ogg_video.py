"""Ogg Theora video (.ogv): an ffmpeg stream copy of the Theora stream and one Vorbis or Opus stream.

An Ogg file interleaves the pages of several logical streams; every stream opens with a BOS page
and its header packets, one of which is a Vorbis-style comment (vendor string, NAME=value pairs).
The copy is written by ffmpeg's Ogg muxer from the packets alone: it writes fresh comment headers
holding no comment and, with ``bitexact``, the vendor string ``ffmpeg`` (the muxer library's name,
without a version: technical, the same in every copy, and allowed by exactly that value). Skeleton,
Kate and other logical streams, a second video or audio stream, and whatever follows the last page
are left behind. Ogg has no standard place for a location or a capture time: ``locate`` finds none,
and the comments that might hold either are dropped whole.

Only files whose first page opens a Theora stream are ours: audio-only Ogg belongs to ``ogg``. A
chained Ogg (streams that start after others have carried data) is ``unsupported_format``; a last
page cut short is ``truncated``.

The verifier's look (``inspect``): a page walk of the copy (the Theora stream first, at most one
Vorbis or Opus stream, every comment header exactly the empty one, pages to the last byte, each
stream closed by an EOS page), ffprobe (no tag, chapter or stream beyond the two), and mutagen's
Ogg readers (no comment).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path


from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.formats.av.audio_inspect import mapped_file
from worker.formats.av.av_rebuild import check_limits, pick_streams
from worker.formats.base import Format, Limits, Rebuilt
from worker.formats.av.ogg import BOS, CAPTURE, PAGE_HEADER, check_page, iter_pages
from worker.location import Found
from worker.tools import decode_findings, decode_sample, ffprobe, probe_duration, run_tool, stream_copy_args

EOS = 0x04
CONTINUED = 0x01
# bytes of header packets a walk may gather for one stream (setup headers are a few kB; a comment
# header holding cover art can be large, but not this large)
MAX_HEADER_BYTES = 16 * 1024 * 1024
# the Ogg muxer's vendor string under ``bitexact``; an empty one is as clean
VENDORS = frozenset({b"", b"ffmpeg"})
DEMUXER = "ogg"


@dataclass(frozen=True)
class Codec:
    name: str
    kind: str                   # "video" | "audio" | "other"
    magic: bytes                # how the identification packet starts
    comment: bytes = b""        # how the comment packet starts ("" when the codec has none we keep)
    headers: int = 1            # header packets, identification first
    framing: bytes = b""        # what follows an empty comment list (Vorbis: the framing bit)


THEORA = Codec("theora", "video", b"\x80theora", b"\x81theora", 3)
KEPT_AUDIO = (Codec("vorbis", "audio", b"\x01vorbis", b"\x03vorbis", 3, b"\x01"),
              Codec("opus", "audio", b"OpusHead", b"OpusTags", 2))
# logical streams we name in a report but never keep
OTHER = (Codec("skeleton", "other", b"fishead\x00"), Codec("kate", "other", b"\x80kate\x00"),
         Codec("speex", "audio", b"Speex   "), Codec("flac", "audio", b"\x7fFLAC"),
         Codec("vp8", "video", b"OVP80"), Codec("dirac", "video", b"BBCD\x00"))
UNKNOWN = Codec("unknown", "other", b"")


def codec_of(packet: bytes) -> Codec:
    return next((c for c in (THEORA, *KEPT_AUDIO, *OTHER) if packet.startswith(c.magic)), UNKNOWN)


def accept(head: bytes) -> bool:
    """The file's first page is a BOS page whose packet is a Theora identification header."""
    page = next(iter_pages(head), None)
    return page is not None and bool(page.flags & BOS) and head[page.body:page.body + 7] == THEORA.magic


def locate(path: Path, limits: Limits) -> Found:
    return Found()      # Ogg carries no standard location or capture time; its comments are dropped


# --- the page walk ---------------------------------------------------------------------------


@dataclass
class Stream:
    serial: int
    codec: Codec = UNKNOWN
    packets: list[bytes] = field(default_factory=list)    # the header packets, as far as gathered
    partial: bytearray = field(default_factory=bytearray)
    pages: int = 0
    ended: bool = False                                   # its last page so far carries EOS

    def gather(self, data, page) -> None:
        """Add this page's packet data to the header packets until they are all there (bounded)."""
        if len(self.packets) >= self.codec.headers:
            return
        laces = data[page.offset + PAGE_HEADER.size:page.body]
        pos = page.body
        for lace in laces:
            self.partial += data[pos:pos + lace]
            pos += lace
            if len(self.partial) > MAX_HEADER_BYTES:
                raise too_large(f"Ogg header packet of stream {self.serial} over {MAX_HEADER_BYTES} bytes")
            if lace < 255:
                self.packets.append(bytes(self.partial))
                self.partial.clear()
                if len(self.packets) == 1:
                    self.codec = codec_of(self.packets[0])
                if len(self.packets) >= self.codec.headers:
                    return


@dataclass
class Walk:
    streams: list[Stream]       # in the order their BOS pages come
    end: int                    # where the last whole page ends
    size: int
    chained: bool = False       # a BOS page after data pages, or a serial reused
    stray: int = 0              # pages of a serial no BOS page announced
    tail: bytes = b""           # the first bytes after the last whole page

    @property
    def cut(self) -> bool:
        """The bytes after the last whole page start another page: the file ends inside it."""
        return self.end < self.size and self.tail.startswith(CAPTURE)


def walk(data) -> Walk:
    """Every whole page from the start, headers gathered per logical stream; one pass, bounded."""
    streams: dict[int, Stream] = {}
    result = Walk(streams=[], end=0, size=len(data))
    data_seen = False
    for page in iter_pages(data):
        check_page(data, page, None)      # a page failing its CRC is damage: readers drop it
        stream = streams.get(page.serial)
        if page.flags & BOS:
            if data_seen or stream is not None:
                result.chained = True
                break
            stream = streams[page.serial] = Stream(page.serial)
            result.streams.append(stream)
        elif stream is None:
            result.stray += 1
            result.end = page.offset + page.size
            continue
        else:
            data_seen = True
        stream.gather(data, page)
        stream.pages += 1
        stream.ended = bool(page.flags & EOS)
        result.end = page.offset + page.size
    result.tail = bytes(data[result.end:result.end + 4])
    return result


def comment_of(stream: Stream) -> bytes | None:
    """The stream's comment packet, or None when it has none we know."""
    if not stream.codec.comment:
        return None
    return next((p for p in stream.packets[1:] if p.startswith(stream.codec.comment)), None)


def describe_comment(stream: Stream) -> str:
    packet = comment_of(stream) or b""
    body = packet[len(stream.codec.comment):]
    try:
        (vendor_length,) = struct.unpack_from("<I", body, 0)
        (count,) = struct.unpack_from("<I", body, 4 + vendor_length)
        return f"{stream.codec.name} comment header (vendor string, {count} comments)"
    except struct.error:
        return f"{stream.codec.name} comment header"


def is_empty_comment(stream: Stream) -> bool:
    """The comment packet holds an allowed vendor string, no comment, nothing after (the one ffmpeg writes)."""
    packet = comment_of(stream)
    if packet is None:
        return False
    return any(packet == stream.codec.comment + struct.pack("<I", len(v)) + v + struct.pack("<I", 0)
               + stream.codec.framing for v in VENDORS)


# --- rebuild ---------------------------------------------------------------------------------


def check_source(src: Path, limits: Limits) -> list[str]:
    """Walk the source's pages: refuse chained and cut files; name what the copy will leave behind."""
    with mapped_file(src, limits) as data:
        found = walk(data)
    if found.chained:
        raise unsupported("chained Ogg (a stream starts after others carried data): not supported")
    if found.cut:
        raise truncated(f"the last Ogg page is cut short at byte {found.size}")
    if not found.streams or found.streams[0].codec is not THEORA:
        raise unsupported("the first Ogg stream is not Theora")
    if len(found.streams[0].packets) < THEORA.headers:
        raise truncated("the Ogg file ends inside the Theora header packets")
    removed = [describe_comment(s) for s in found.streams if comment_of(s) is not None]
    removed += [f"{s.codec.name} stream" for s in found.streams if s.codec.kind == "other"]
    if found.stray:
        removed.append(f"{found.stray} pages of unannounced streams")
    if found.end < found.size:
        removed.append(f"data after the last Ogg page ({found.size - found.end} bytes)")
    return removed


def remux_args(src: Path, dst: Path, indexes: list[int]) -> list[str]:
    return stream_copy_args(src, dst, demuxer=DEMUXER, muxer="ogg", indexes=indexes)


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    removed = check_source(src, limits)
    probe = ffprobe(src, limits, DEMUXER)
    check_limits(probe, limits)
    video, audio = pick_streams(probe)
    if video is None or video.get("codec_name") != "theora":
        raise corrupt("ffmpeg finds no readable Theora stream")
    if audio is not None and audio.get("codec_name") not in {c.name for c in KEPT_AUDIO}:
        raise unsupported(f"Ogg video with {audio.get('codec_name')} audio: only Vorbis and Opus are supported")
    kept = [s for s in (video, audio) if s is not None]
    decode_sample(src, limits, duration=probe_duration(probe), demuxer=DEMUXER,
                  indexes=[s["index"] for s in kept], what="checking the input")
    run_tool(remux_args(src, dst, [s["index"] for s in kept]), limits, what="remuxing")
    copy_video, copy_audio = pick_streams(ffprobe(dst, limits, DEMUXER))
    if copy_video is None or (copy_audio is None) != (audio is None):
        raise corrupt("ffmpeg could not copy every kept stream (no readable packets)")
    indexes = {s["index"] for s in kept}
    removed += [f"{s.get('codec_type', 'unknown')} stream {s.get('codec_name') or ''}".strip()
                for s in probe.get("streams") or [] if s.get("index") not in indexes
                and s.get("codec_type") in ("video", "audio", "subtitle", "attachment")]
    return Rebuilt(format="ogv", media_type="video/ogg", extension=".ogv", removed=tuple(removed))


# --- inspect ---------------------------------------------------------------------------------


def page_findings(path: Path) -> list[str]:
    with mapped_file(path) as data:
        found = walk(data)
    findings: list[str] = []
    if found.chained:
        findings.append("a chained Ogg stream")
    if found.stray:
        findings.append(f"{found.stray} pages of unannounced streams")
    if found.end != found.size:
        findings.append(f"{found.size - found.end} bytes after the last whole Ogg page")
    codecs = [s.codec for s in found.streams]
    if not codecs or codecs[0] is not THEORA:
        findings.append("the first Ogg stream is not Theora")
    extra = [c.name for c in codecs[1:] if c not in KEPT_AUDIO] + [c.name for c in codecs[2:] if c in KEPT_AUDIO]
    if extra:
        findings.append(f"logical streams outside the allow-list: {extra}")
    for s in found.streams:
        if s.codec in (THEORA, *KEPT_AUDIO):
            if len(s.packets) < s.codec.headers:
                findings.append(f"{s.codec.name} stream {s.serial} lacks header packets")
            elif not is_empty_comment(s):
                findings.append(f"{describe_comment(s)} is not the empty one")
        if not s.ended:
            findings.append(f"{s.codec.name} stream {s.serial} has no EOS page")
    return findings


def probe_findings(probe: dict, *, format_tags: frozenset[str] = frozenset(),
                   stream_tags: frozenset[str] = frozenset()) -> list[str]:
    """ffprobe's view of a stream copy: one video and at most one audio stream, no chapter, no
    attached picture, no tag outside the given allow-lists."""
    findings = [f"container tag {k}" for k in (probe.get("format") or {}).get("tags") or {} if k not in format_tags]
    if probe.get("chapters"):
        findings.append(f"{len(probe['chapters'])} chapters")
    streams = probe.get("streams") or []
    kinds = [s.get("codec_type") for s in streams]
    if kinds.count("video") != 1 or kinds.count("audio") > 1 or len(streams) != kinds.count("video") + kinds.count("audio"):
        findings.append(f"streams {kinds}, expected one video and at most one audio")
    for s in streams:
        if (s.get("disposition") or {}).get("attached_pic"):
            findings.append(f"stream {s.get('index')} is an attached picture")
        findings += [f"stream {s.get('index')} tag {k}" for k in s.get("tags") or {} if k not in stream_tags]
    return findings


def mutagen_findings(path: Path, audio_codec: str | None) -> list[str]:
    """mutagen's Ogg readers, each finding its own stream in the multiplexed file."""
    from mutagen.oggopus import OggOpus
    from mutagen.oggtheora import OggTheora
    from mutagen.oggvorbis import OggVorbis

    readers = [OggTheora] + ([{"vorbis": OggVorbis, "opus": OggOpus}[audio_codec]] if audio_codec else [])
    findings = []
    for reader in readers:
        try:
            tags = reader(str(path)).tags
        except Exception as e:  # noqa: BLE001 - any mutagen failure means the copy is not a clean file of its kind
            findings.append(f"mutagen {reader.__name__} cannot read the copy: {type(e).__name__}: {e}")
            continue
        if tags is not None and list(tags.keys()):
            findings.append(f"mutagen {reader.__name__} finds comments {sorted(tags.keys())[:10]}")
        if tags is not None and tags.vendor.encode("utf-8") not in VENDORS:
            findings.append(f"mutagen {reader.__name__} finds vendor string {tags.vendor!r}")
    return findings


def inspect(path: Path) -> list[str]:
    """Findings on an agency copy; empty when it is clean. Never raises for a bad copy."""
    try:
        findings = page_findings(path)
        probe = ffprobe(path, Limits(), DEMUXER)
        findings += probe_findings(probe)
        _, audio = pick_streams(probe)
        codec = audio.get("codec_name") if audio else None
        if codec not in (None, *(c.name for c in KEPT_AUDIO)):
            findings.append(f"audio codec {codec}")
            codec = None
        findings += decode_findings(path, probe, Limits(), DEMUXER)
        return findings + mutagen_findings(path, codec)
    except SanitizeError as e:
        return [f"the copy does not read back: {e.code}: {e.message}"]


FORMATS = [
    Format(name="ogv", kind="video", media_type="video/ogg", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".ogv",)),
]
