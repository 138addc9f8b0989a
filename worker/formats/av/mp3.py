"""MP3 (MPEG-1, 2 and 2.5 audio, layers I to III): keep the audio frames, drop every tag around them.

An MP3 file is a run of self-describing MPEG audio frames with tags glued on wherever writers
chose: ID3v2 at the start (sometimes several, sometimes appended at the end with a "3DI" footer),
APEv2 and Lyrics3 before the end, ID3v1 in the last 128 bytes. The agency copy is the frames
alone, byte for byte, from the first valid frame on. Cover art inside ID3 may carry its own EXIF
GPS; it goes with the tag.

The one exception to "byte for byte" is a Xing/Info or VBRI header frame: a frame of silence whose
payload describes the stream. Its frame count, byte count and seek table are kept (players need
them for the duration of a VBR file and for seeking); everything after them in the frame is set to
zero in the copy. That is where LAME writes its extension: the encoder's name and version
("LAME3.99r", "Lavc59.37"), its settings, ReplayGain, the encoder delay and padding and a CRC.
Device, owner and software fields are copied nowhere, so the encoder name goes, and with it, by a
privacy trade we choose, the gapless-playback trim: players no longer cut the encoder's ~1100
samples of leading silence and the padding at the end (ffmpeg then reports a start time of 0
instead of 0.025 s; the duration is unchanged, and no audio frame changes).

Ancillary bits, decided: copied as they are. Layer III frames may end with ancillary data, bits
after the frame's audio that no decoder reads; LAME fills them with its own name and version
("LAME3.99.5UUU…"). The agency copy keeps every audio frame byte for byte (the packets of copy and
upload are identical, which is what lets the verifier and the corpus check prove that no audio
changed), so these bits travel too. They are not a place any device, app or tag reader puts
metadata: no reader (ExifTool, ffprobe, mutagen) shows them, encoders write only their own name
there, and a file crafted to carry text there could carry it in the audio samples just as well,
which no sanitizer removes. Zeroing them would mean following Layer III's bit reservoir across
frames and would change the packets. So "frames unchanged" wins over scrubbing bits no device
writes personal data into.

The scan is linear and bounded: after junk it resumes at the next place a frame or a tag could
start (one forward search, never a search to the end per step), and once the audio has started, a
long run of junk or thousands of false syncs in a row end it (the rest is dropped, unread). It is
also C-speed: once the stream is known, runs of its frames are walked by one regular expression
(exactly the frames the per-frame checks keep; a test holds the two equal on damaged files), and
only what ends a run goes through those checks one frame at a time. The file is mapped, read
once, and the pages behind the walk are released, so a long recording is never held in memory.
The verifier's walk of the copy (``walk_copy``) is a walk of its own, in the same runs.

MP3 has no standard place for a location, and ID3's TDRC/TYER is a release date, not a capture
time, so ``locate`` finds nothing.
"""
from __future__ import annotations

import functools
import io
import re
from pathlib import Path
from typing import NamedTuple

from worker.errors import corrupt, too_large, truncated, unsupported
from worker.formats.av.audio_inspect import (CopyWalk, check_frames_decode, inspect_copy, mapped_file, release,
                                             write_range)
from worker.formats.base import Format, Limits, Rebuilt
from worker.location import Found

# kbit/s by [MPEG-1?][layer][index]; index 0 is free format (unsupported), 15 is invalid
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# version bits -> (name, sample rates)
_VERSIONS = {3: ("1", (44100, 48000, 32000)), 2: ("2", (22050, 24000, 16000)), 0: ("2.5", (11025, 12000, 8000))}
_LAYERS = {3: 1, 2: 2, 1: 3}

ID3V1_SIZE = 128
ID3V1_EXTENDED_SIZE = 227          # "TAG+" block written before an ID3v1 tag
APE_FOOTER_SIZE = 32
LYRICS3_V1_MAX = 5100 + 11 + 9     # LYRICSBEGIN + up to 5100 bytes + LYRICSEND
# the side information (bytes after the 4-byte frame header, before a Xing/Info tag) by [MPEG-1?][mono?]
_SIDE_INFO = {(True, False): 32, (True, True): 17, (False, False): 17, (False, True): 9}
XING_MARKERS = (b"Xing", b"Info")
VBRI_OFFSET = 4 + 32               # Fraunhofer's VBRI tag sits at a fixed place whatever the mode
VBRI_FIELDS = 26                   # "VBRI", version, delay, quality, bytes, frames, TOC entries, scale, entry size, frames per entry
LAME_EXTENSION_SIZE = 36           # encoder string (9) ... tag CRC: what follows the Xing fields
# where a frame or a tag could start: the resync points after junk. A frame header is the 11 sync
# bits, a version other than 01, a layer other than 00 (second byte), then a bitrate index other
# than 0 and 15 (third byte); frame_header checks the rest.
RESYNC = re.compile(rb"\xff[\xe2-\xe7\xf2-\xf7\xfa-\xff][\x10-\xef]|ID3|APETAGEX")
# after the audio has started, a run of non-audio this long, or this many false syncs in a row,
# ends it: the rest is dropped unread (the scan stays linear and short whatever follows the audio)
MAX_JUNK_RUN = 256 * 1024
MAX_FALSE_SYNCS = 4096
# how far past the tags the first frame may start (some writers leave zero padding after ID3v2)
FIRST_FRAME_SEARCH = 64 * 1024


class FrameHeader(NamedTuple):
    version: str            # "1", "2" or "2.5"
    layer: int              # 1, 2 or 3
    sample_rate: int
    length: int             # bytes, header included
    samples: int            # PCM samples per channel this frame decodes to

    def same_stream(self, other: "FrameHeader") -> bool:
        return (self.version, self.layer, self.sample_rate) == (other.version, other.layer, other.sample_rate)


def frame_header(data, pos: int) -> FrameHeader | None:
    """The MPEG audio frame header at ``pos``, or None when those 4 bytes are not a usable one.

    Free-format frames (bitrate index 0) have no computable length and are treated as not a frame.
    """
    if pos + 4 > len(data):
        return None
    b0, b1, b2, b3 = data[pos], data[pos + 1], data[pos + 2], data[pos + 3]
    if b0 != 0xFF or (b1 & 0xE0) != 0xE0:
        return None
    version_bits, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version_bits == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3 or (b3 & 3) == 2:
        return None
    version, rates = _VERSIONS[version_bits]
    layer = _LAYERS[layer_bits]
    sample_rate = rates[rate_index]
    length, samples = _frame_size(version, layer, sample_rate, bitrate_index, padding)
    return FrameHeader(version, layer, sample_rate, length, samples)


def _frame_size(version: str, layer: int, sample_rate: int, bitrate_index: int, padding: int) -> tuple[int, int]:
    """(bytes, samples per channel) of a frame: the one formula for frame_header and the run patterns."""
    mpeg1 = version == "1"
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    if layer == 1:
        return (12 * bitrate // sample_rate + padding) * 4, 384
    if layer == 2 or mpeg1:
        return 144 * bitrate // sample_rate + padding, 1152
    return 72 * bitrate // sample_rate + padding, 576


def header_fields_end(data, pos: int, header: FrameHeader, *, first: bool) -> int | None:
    """Where the fields players need end, as an offset in ``data``, when the frame at ``pos`` is a
    Xing/Info or VBRI header frame; None for an audio frame.

    Kept: the marker, the Xing flags, frame count, byte count, TOC and VBR scale; the VBRI version,
    delay, quality, byte and frame counts and seek table (none names anything). After that, up to
    the end of the frame, is the LAME extension (or nothing): the copy holds zeros there.

    The first frame is judged as ffmpeg judges it (the marker right after the side information;
    also after a CRC, which some writers count). A header frame later in the stream (two
    recordings glued together) must also have all-zero side information, which no frame of
    real audio has, so a chance "Info" in compressed audio is left alone.
    """
    frame = bytes(data[pos:pos + header.length])
    mono = (frame[3] >> 6) == 3
    side = _SIDE_INFO[(header.version == "1", mono)]
    crc = 0 if frame[1] & 1 else 2

    def silent_before(offset: int) -> bool:   # side information (after any CRC) all zero up to the marker
        return first or not any(frame[4 + crc:offset])

    for offset in dict.fromkeys((4 + side, 4 + crc + side)):
        if frame[offset:offset + 4] in XING_MARKERS and offset + 8 <= len(frame) and silent_before(offset):
            flags = int.from_bytes(frame[offset + 4:offset + 8], "big")
            end = offset + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
            return pos + min(end, len(frame))
    if frame[VBRI_OFFSET:VBRI_OFFSET + 4] == b"VBRI" and VBRI_OFFSET + VBRI_FIELDS <= len(frame) \
            and silent_before(VBRI_OFFSET):
        entries = int.from_bytes(frame[VBRI_OFFSET + 18:VBRI_OFFSET + 20], "big")
        entry_size = int.from_bytes(frame[VBRI_OFFSET + 22:VBRI_OFFSET + 24], "big")
        return pos + min(VBRI_OFFSET + VBRI_FIELDS + entries * entry_size, len(frame))
    return None


def _syncsafe(raw: bytes) -> int | None:
    if len(raw) != 4 or any(b & 0x80 for b in raw):
        return None
    return (raw[0] << 21) | (raw[1] << 14) | (raw[2] << 7) | raw[3]


def id3v2_size(data, pos: int) -> int | None:
    """Total bytes of the ID3v2 tag starting at ``pos`` (header, body, footer), or None if there is none."""
    if data[pos:pos + 3] != b"ID3" or pos + 10 > len(data):
        return None
    major, flags = data[pos + 3], data[pos + 5]
    size = _syncsafe(bytes(data[pos + 6:pos + 10]))
    if major not in (2, 3, 4) or data[pos + 4] == 0xFF or size is None:
        return None
    return 10 + size + (10 if major == 4 and flags & 0x10 else 0)


def _confirmed(data, pos: int, end: int, header: FrameHeader) -> bool:
    """A sync at ``pos`` is trusted when the next frame follows where it says, or the audio ends there."""
    after = pos + header.length
    if after == end:
        return True
    following = frame_header(data, after)
    return following is not None and following.same_stream(header)


def _tag_at(data, pos: int) -> bool:
    return id3v2_size(data, pos) is not None or data[pos:pos + 8] == b"APETAGEX"


# --- runs of frames, walked in C ----------------------------------------------------------------
#
# A long recording is hundreds of thousands of frames, and a Python step per frame costs seconds.
# Once the stream is known (the first frame's version, layer and sample rate), each of its frames
# is one of a few shapes: the sync byte, a second byte with or without CRC, a third byte naming one
# of the 14 bitrates and the padding bit (private bit either way), a fourth byte whose emphasis is
# not the reserved value, then as many bytes as those fix. One regular expression per stream walks
# a run of such frames back to back, each followed by the header of the next: exactly the frames
# the per-frame checks (frame_header, same_stream, _confirmed) would keep. The Python loop handles
# what ends a run (a tag, junk, another stream, a cut-off frame, the frame before the end) as before.
RUN_WINDOW = 4 << 20               # bytes one run covers at most: the pages behind it are released
# a header frame later in the stream has all-zero side information (header_fields_end): at least 7
# zero bytes right before its Xing/Info marker (30 before VBRI's). Searched as one literal prefix.
LATER_HEADER_MARK = re.compile(b"\0" * 7 + b"(?:Xing|Info|VBRI)")
MARK_OFFSET = 7


def _byte_class(values) -> bytes:
    """A character class of ``values``, contiguous ones as ranges (a short pattern compiles fast)."""
    ranges: list[list[int]] = []
    for v in sorted(set(values)):
        if ranges and ranges[-1][1] == v - 1:
            ranges[-1][1] = v
        else:
            ranges.append([v, v])
    return b"[" + b"".join(b"\\x%02x" % a if a == b else b"\\x%02x-\\x%02x" % (a, b) for a, b in ranges) + b"]"


class StreamPatterns(NamedTuple):
    run: re.Pattern       # whole frames of the stream back to back, each followed by a header of it
    frame: re.Pattern     # one whole frame; its empty group lets findall count frames without copying them


@functools.lru_cache(maxsize=16)
def stream_patterns(version: str, layer: int, sample_rate: int) -> StreamPatterns:
    """The frame patterns of one stream, built from the same tables and formula as frame_header."""
    version_bits = next(bits for bits, (name, _) in _VERSIONS.items() if name == version)
    layer_bits = next(bits for bits, number in _LAYERS.items() if number == layer)
    rate_index = _VERSIONS[version_bits][1].index(sample_rate)
    second = _byte_class(0xE0 | version_bits << 3 | layer_bits << 1 | no_crc for no_crc in (0, 1))
    fourth = _byte_class(b for b in range(256) if b & 3 != 2)       # emphasis 2 is reserved
    thirds: dict[int, list[int]] = {}       # frame length -> the third bytes that give it
    for bitrate_index in range(1, 15):      # 0 is free format, 15 is invalid
        for padding in (0, 1):
            length, _ = _frame_size(version, layer, sample_rate, bitrate_index, padding)
            thirds.setdefault(length, []).extend(bitrate_index << 4 | rate_index << 2 | padding << 1 | private
                                                 for private in (0, 1))
    header = b"\\xff" + second + _byte_class(b for values in thirds.values() for b in values) + fourth
    # the header is checked whole by the lookahead, then the third byte alone picks the length
    frame = b"(?=" + header + b")\\xff." + b"(?:" + b"|".join(_byte_class(values) + b".{%d}" % (length - 3)
                                                       for length, values in thirds.items()) + b")"
    return StreamPatterns(run=re.compile(b"(?:" + frame + b"(?=" + header + b"))*+", re.S),
                          frame=re.compile(frame + b"()", re.S))


def frame_run(data, pos: int, stop: int, stream: FrameHeader) -> tuple[int, int]:
    """(end, number of frames) of the run of whole frames of ``stream`` from ``pos``, none past
    ``stop``, each followed by the header of another; (pos, 0) when there is none."""
    patterns = stream_patterns(stream.version, stream.layer, stream.sample_rate)
    end = patterns.run.match(data, pos, stop).end()
    return (end, len(patterns.frame.findall(data, pos, end))) if end > pos else (pos, 0)


def _next_marker(data, start: int, stop: int) -> int:
    """Where the next marker a later header frame could hold starts in ``[start, stop)``, or -1."""
    found = LATER_HEADER_MARK.search(data, start, stop)
    return found.start() + MARK_OFFSET if found else -1


def marked_frames(data, start: int, stop: int, stream: FrameHeader) -> list[tuple[int, FrameHeader]]:
    """The frames of the run ``[start, stop)`` (frame_run's) that hold a Xing, Info or VBRI marker
    after zero bytes: the only ones header_fields_end can take for header frames later in a stream.
    The markers are found by one search; only when there is one is the run walked frame by frame
    (in C) to the last of them."""
    hit = _next_marker(data, start, stop)
    found: list[tuple[int, FrameHeader]] = []
    if hit < 0:
        return found
    for match in stream_patterns(stream.version, stream.layer, stream.sample_rate).frame.finditer(data, start, stop):
        if match.end() <= hit:
            continue
        found.append((match.start(), frame_header(data, match.start())))   # the run is back to back: this frame holds the hit
        hit = _next_marker(data, match.end(), stop)
        if hit < 0:
            break
    return found


def accept(head: bytes) -> bool:
    pos = 0
    while (size := id3v2_size(head, pos)) is not None:
        pos += size
    if pos >= len(head):
        return pos > 0       # an ID3v2 tag larger than the head: judged again by rebuild
    if head[pos:pos + 4] == b"fLaC":
        return False         # FLAC behind an ID3v2 tag belongs to flac.py
    if pos == 0:
        header = frame_header(head, 0)
        return header is not None and (header.length >= len(head) or _confirmed(head, 0, len(head), header))
    limit = min(len(head), pos + 4096)
    return any(frame_header(head, p) is not None for p in range(pos, limit - 3))


class Scan(NamedTuple):
    frames: list[tuple[int, int]]     # [start, end) byte ranges of kept frames, merged where contiguous
    removed: list[str]
    blanked: list[tuple[int, int]]    # [start, end) written as zeros: LAME extensions
    samples: int
    sample_rate: int


def _describe_id3v2(raw: bytes) -> str:
    major = raw[3]
    try:
        from mutagen.id3 import ID3

        tags = ID3(io.BytesIO(raw))
        pictures = [k for k in tags if k.startswith(("APIC", "PIC"))]
        extra = ", APIC cover art" if pictures else ""
        return f"ID3v2.{major} ({len(tags)} frames{extra})"
    except Exception:  # noqa: BLE001 - the description is for people; the tag is dropped either way
        return f"ID3v2.{major}"


def peel_trailing_tags(data, end: int, removed: list[str]) -> int:
    """Move ``end`` back over the tags writers append (in any order), recording each.

    Shared with FLAC: taggers glue ID3v1 and APEv2 onto FLAC files too.
    """
    while True:
        if end >= ID3V1_SIZE and data[end - ID3V1_SIZE:end - ID3V1_SIZE + 3] == b"TAG":
            end -= ID3V1_SIZE
            removed.append("ID3v1")
            if end >= ID3V1_EXTENDED_SIZE and data[end - ID3V1_EXTENDED_SIZE:end - ID3V1_EXTENDED_SIZE + 4] == b"TAG+":
                end -= ID3V1_EXTENDED_SIZE
                removed.append("ID3v1 extended")
        elif end >= APE_FOOTER_SIZE and data[end - 32:end - 24] == b"APETAGEX":
            size = int.from_bytes(data[end - 20:end - 16], "little")
            flags = int.from_bytes(data[end - 12:end - 8], "little")
            total = size + (APE_FOOTER_SIZE if flags & 0x80000000 else 0)
            if size < APE_FOOTER_SIZE or total > end:
                raise corrupt("APEv2 tag size runs past the start of the file")
            end -= total
            removed.append("APEv2")
        elif end >= 15 and data[end - 9:end] == b"LYRICS200":
            digits = bytes(data[end - 15:end - 9])
            if not digits.isdigit() or int(digits) + 15 > end:
                raise corrupt("Lyrics3v2 size is not a number or runs past the start of the file")
            begin = end - 15 - int(digits)
            if data[begin:begin + 11] != b"LYRICSBEGIN":
                raise corrupt("Lyrics3v2 tag does not start where its size says")
            end = begin
            removed.append("Lyrics3v2")
        elif end >= 20 and data[end - 9:end] == b"LYRICSEND":
            window_start = max(0, end - LYRICS3_V1_MAX)
            begin = bytes(data[window_start:end]).rfind(b"LYRICSBEGIN")
            if begin < 0:
                raise corrupt("Lyrics3 end marker without a beginning")
            end = window_start + begin
            removed.append("Lyrics3")
        elif end >= 20 and data[end - 10:end - 7] == b"3DI":
            size = _syncsafe(bytes(data[end - 4:end]))
            if size is None or size + 20 > end:
                raise corrupt("appended ID3v2 tag size runs past the start of the file")
            end -= size + 20
            removed.append(f"ID3v2.{data[end + 3]} (appended)")
        else:
            return end


def scan(data, limits: Limits) -> Scan:
    """Find every audio frame of ``data`` (bytes or mmap) and name everything else."""
    removed: list[str] = []
    end = peel_trailing_tags(data, len(data), removed)
    frames: list[tuple[int, int]] = []
    first: FrameHeader | None = None
    blanked: list[tuple[int, int]] = []
    samples = 0
    junk = 0
    kept = 0
    false_syncs = 0
    pos = released = 0
    while pos < end:
        if first is not None:
            run_end, count = frame_run(data, pos, min(end, pos + RUN_WINDOW), first)
            if count:
                for at, header in marked_frames(data, pos, run_end, first):
                    fields_end = header_fields_end(data, at, header, first=False)
                    if fields_end is not None and any(data[fields_end:at + header.length]):
                        blanked.append((fields_end, at + header.length))
                kept += count
                samples += count * first.samples
                if frames and frames[-1][1] == pos:
                    frames[-1] = (frames[-1][0], run_end)
                else:
                    frames.append((pos, run_end))
                pos, false_syncs = run_end, 0
                release(data, released, pos)
                released = pos
                continue
        tag_size = id3v2_size(data, pos)
        if tag_size is not None:
            if pos + tag_size > end:
                raise truncated("an ID3v2 tag runs past the end of the file")
            removed.append(_describe_id3v2(bytes(data[pos:pos + tag_size])) if pos == 0 or not frames
                           else f"ID3v2.{data[pos + 3]} (inside the audio)")
            pos += tag_size
            continue
        if data[pos:pos + 8] == b"APETAGEX" and pos + APE_FOOTER_SIZE <= end:
            size = int.from_bytes(data[pos + 12:pos + 16], "little")
            flags = int.from_bytes(data[pos + 20:pos + 24], "little")
            skip = APE_FOOTER_SIZE + size if flags & 0x20000000 else APE_FOOTER_SIZE
            removed.append("APEv2")
            pos = min(end, pos + skip)
            continue
        header = frame_header(data, pos)
        if header is not None and (first is None or header.same_stream(first)):
            if pos + header.length > end and first is not None:
                # a cut-off last frame is still audio: players (and ffmpeg) decode what there is
                fields_end = header_fields_end(data, pos, header, first=False)
                if fields_end is not None and fields_end < end and any(data[fields_end:end]):
                    blanked.append((fields_end, end))
                frames.append((pos, end))
                break
            # a frame counts only when the next frame (or a tag, or the end of the audio) follows
            # where it says: a frame whose declared length runs into junk was cut by an insertion,
            # and its bytes would carry the start of whatever was inserted
            if _confirmed(data, pos, end, header) or _tag_at(data, pos + header.length):
                fields_end = header_fields_end(data, pos, header, first=first is None)
                if fields_end is not None and any(data[fields_end:pos + header.length]):
                    blanked.append((fields_end, pos + header.length))
                kept += 1
                first = first or header
                if frames and frames[-1][1] == pos:
                    frames[-1] = (frames[-1][0], pos + header.length)
                else:
                    frames.append((pos, pos + header.length))
                samples += header.samples
                pos += header.length
                false_syncs = 0
                continue
        if first is None and junk > FIRST_FRAME_SEARCH:
            raise unsupported(f"no MPEG audio frame within {FIRST_FRAME_SEARCH} bytes of the start of the audio")
        # not a frame: junk between tags and frames, or damage; resync at the next place a frame or
        # a tag could start, found by one forward search (never a search to the end per step)
        found = RESYNC.search(data, pos + 1, end)
        nxt = found.start() if found else end
        false_syncs += 1
        if first is not None and (nxt - pos > MAX_JUNK_RUN or false_syncs > MAX_FALSE_SYNCS):
            junk += end - pos
            break
        junk += nxt - pos
        pos = nxt
    if first is None:
        if not junk:
            raise unsupported(f"tags ({', '.join(removed) or 'none'}) and no MPEG audio")
        raise unsupported("no MPEG audio frames found (free-format MP3 is not supported)")
    if kept < 2:
        # players (ffmpeg among them) will not start on a single frame they cannot check against a second
        header_only = kept == 1 and header_fields_end(data, frames[0][0], first, first=True) is not None
        raise truncated(f"{kept} complete MPEG audio frame(s){' (the Xing/Info header, no audio)' if header_only else ''}"
                        ": the audio is cut off")
    if junk:
        removed.append(f"non-audio data ({junk} bytes)")
    if blanked:
        removed.append("LAME extension of the header frame (encoder name and settings)" if len(blanked) == 1
                       else f"LAME extensions of {len(blanked)} header frames (encoder name and settings)")
    duration = samples / first.sample_rate
    if duration > limits.max_duration_s:
        raise too_large(f"{duration:.0f} s of audio is over the limit of {limits.max_duration_s:.0f} s")
    return Scan(frames=frames, removed=removed, blanked=blanked, samples=samples, sample_rate=first.sample_rate)


def locate(path: Path, limits: Limits) -> Found:
    return Found()


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    with mapped_file(src, limits) as data:
        result = scan(data, limits)
        with open(dst, "wb") as out:
            blanks = iter(result.blanked)
            blank = next(blanks, None)
            for start, stop in result.frames:
                while blank is not None and blank[0] < stop:   # blanked ranges lie inside kept frames, in order
                    write_range(out, data, start, blank[0])
                    out.write(bytes(blank[1] - blank[0]))
                    start = blank[1]
                    blank = next(blanks, None)
                write_range(out, data, start, stop)
    check_frames_decode(dst, limits, result.samples / result.sample_rate, reader="mutagen.mp3")
    return Rebuilt(format="mp3", media_type="audio/mpeg", extension=".mp3", removed=tuple(result.removed))


def walk_copy(data) -> CopyWalk:
    """The copy must be MPEG audio frames of one stream from byte 0 to the last byte (the last one
    may be cut off, as the rebuild keeps it), no header frame with data after its fields, and
    nothing a tag reader would take for a tag. The duration is that of the whole frames walked."""
    findings: list[str] = []
    first = frame_header(data, 0)
    if first is None:
        return CopyWalk(["the copy does not start with an MPEG audio frame"], None)
    pos = released = frames = 0
    while pos < len(data):
        run_end, count = frame_run(data, pos, min(len(data), pos + RUN_WINDOW), first) if pos else (pos, 0)
        marked = marked_frames(data, pos, run_end, first) if count else []
        if not count:
            header = frame_header(data, pos)
            if header is None or not header.same_stream(first):
                findings.append(f"bytes at {pos} are not an MPEG audio frame of the stream")
                break
            marked, run_end, count = [(pos, header)], pos + header.length, int(pos + header.length <= len(data))
        for at, header in marked:
            fields_end = header_fields_end(data, at, header, first=at == 0)
            if fields_end is not None and any(data[fields_end:at + header.length]):
                text = bytes(data[fields_end:fields_end + 9]).rstrip(b"\0").decode("latin-1")
                findings.append(f"the header frame at {at} keeps data after its Xing/VBRI fields (encoder {text!r})")
        pos, frames = run_end, frames + count
        release(data, released, min(pos, len(data)))
        released = pos
    size = len(data)
    if size >= ID3V1_SIZE and data[size - ID3V1_SIZE:size - ID3V1_SIZE + 3] == b"TAG":
        findings.append("an ID3v1 tag at the end")
    if size >= APE_FOOTER_SIZE and data[size - 32:size - 24] == b"APETAGEX":
        findings.append("an APEv2 footer at the end")
    if data[size - 9:size] in (b"LYRICS200", b"LYRICSEND"):
        findings.append("a Lyrics3 tag at the end")
    if size >= 10 and data[size - 10:size - 7] == b"3DI":
        findings.append("an ID3v2 footer at the end")
    return CopyWalk(findings, frames * first.samples / first.sample_rate)


def header_frame_text(data) -> bytes:
    """The bytes of the first frame when it is a Xing/Info/VBRI header frame (no audio), else b""."""
    first = frame_header(data, 0)
    if first is None or first.length > len(data) or header_fields_end(data, 0, first, first=True) is None:
        return b""
    return bytes(data[:first.length])


def inspect(path: Path) -> list[str]:
    import mutagen.mp3

    return inspect_copy(path, walk_copy, mutagen.mp3.MP3)


FORMATS = [
    Format(name="mp3", kind="audio", media_type="audio/mpeg", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".mp3",)),
]
