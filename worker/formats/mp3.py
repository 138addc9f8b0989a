"""MP3 (MPEG-1, 2 and 2.5 audio, layers I to III): keep the audio frames, drop every tag around them.

An MP3 file is a run of self-describing MPEG audio frames with tags glued on wherever writers
chose: ID3v2 at the start (sometimes several, sometimes appended at the end with a "3DI" footer),
APEv2 and Lyrics3 before the end, ID3v1 in the last 128 bytes. The agency copy is the frames
alone, byte for byte, from the first valid frame on (the Xing/Info/LAME or VBRI header frame is a
frame and is kept: players need it for duration and gapless playback). Cover art inside ID3 may
carry its own EXIF GPS; it goes with the tag.

MP3 has no standard place for a location, and ID3's TDRC/TYER is a release date, not a capture
time, so ``locate`` finds nothing.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from worker.errors import SanitizeError, corrupt, too_large, truncated, unsupported
from worker.formats.audio_inspect import mapped_file, reader_findings
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
# frames at the start that must be followed by another frame to count (the header frame and the
# first audio frame: a cut-and-pasted file can hold a stray sync between them)
CONFIRMED_FRAMES = 3
# how far past the tags the first frame may start (some writers leave zero padding after ID3v2)
FIRST_FRAME_SEARCH = 64 * 1024


@dataclass(frozen=True)
class FrameHeader:
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
    mpeg1 = version == "1"
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    sample_rate = rates[rate_index]
    if layer == 1:
        length, samples = (12 * bitrate // sample_rate + padding) * 4, 384
    elif layer == 2 or mpeg1:
        length, samples = 144 * bitrate // sample_rate + padding, 1152
    else:
        length, samples = 72 * bitrate // sample_rate + padding, 576
    return FrameHeader(version, layer, sample_rate, length, samples)


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


@dataclass
class Scan:
    frames: list[tuple[int, int]]     # [start, end) byte ranges of kept frames, merged where contiguous
    removed: list[str]
    samples: int = 0
    sample_rate: int = 0


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
    samples = 0
    junk = 0
    kept = 0
    pos = 0
    while pos < end:
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
                frames.append((pos, end))
                break
            # like ffmpeg, trust a sync near the start only when the next frame follows where it says
            if kept >= CONFIRMED_FRAMES or _confirmed(data, pos, end, header):
                kept += 1
                first = first or header
                if frames and frames[-1][1] == pos:
                    frames[-1] = (frames[-1][0], pos + header.length)
                else:
                    frames.append((pos, pos + header.length))
                samples += header.samples
                pos += header.length
                continue
        if first is None and junk > FIRST_FRAME_SEARCH:
            raise unsupported(f"no MPEG audio frame within {FIRST_FRAME_SEARCH} bytes of the start of the audio")
        # not a frame: junk between tags and frames, or damage; resync at the next candidate
        candidates = [i for i in (data.find(b"\xff", pos + 1, end), data.find(b"ID3", pos + 1, end),
                                  data.find(b"APETAGEX", pos + 1, end)) if i >= 0]
        nxt = min(candidates) if candidates else end
        junk += nxt - pos
        pos = nxt
    if first is None:
        raise unsupported("no MPEG audio frames found (free-format MP3 is not supported)")
    if kept < 2:
        # players (ffmpeg among them) will not start on a single frame they cannot check against a second
        raise truncated(f"{kept} complete MPEG audio frame(s): the audio is cut off")
    if junk:
        removed.append(f"non-audio data ({junk} bytes)")
    duration = samples / first.sample_rate
    if duration > limits.max_duration_s:
        raise too_large(f"{duration:.0f} s of audio is over the limit of {limits.max_duration_s:.0f} s")
    return Scan(frames=frames, removed=removed, samples=samples, sample_rate=first.sample_rate)


def locate(path: Path, limits: Limits) -> Found:
    return Found()


def rebuild(src: Path, dst: Path, limits: Limits) -> Rebuilt:
    with mapped_file(src, limits) as data:
        result = scan(data, limits)
        with open(dst, "wb") as out:
            for start, stop in result.frames:
                out.write(data[start:stop])
    return Rebuilt(format="mp3", media_type="audio/mpeg", extension=".mp3", removed=tuple(result.removed))


def structure_findings(data) -> list[str]:
    """The copy must be MPEG audio frames of one stream from byte 0 to the last byte, and nothing
    a tag reader would take for a tag."""
    findings: list[str] = []
    first = frame_header(data, 0)
    if first is None:
        return ["the copy does not start with an MPEG audio frame"]
    pos = 0
    while pos < len(data):
        header = frame_header(data, pos)
        if header is None or not header.same_stream(first):
            findings.append(f"bytes at {pos} are not an MPEG audio frame of the stream")
            break
        pos += header.length
    size = len(data)
    if size >= ID3V1_SIZE and data[size - ID3V1_SIZE:size - ID3V1_SIZE + 3] == b"TAG":
        findings.append("an ID3v1 tag at the end")
    if size >= APE_FOOTER_SIZE and data[size - 32:size - 24] == b"APETAGEX":
        findings.append("an APEv2 footer at the end")
    if data[size - 9:size] in (b"LYRICS200", b"LYRICSEND"):
        findings.append("a Lyrics3 tag at the end")
    if size >= 10 and data[size - 10:size - 7] == b"3DI":
        findings.append("an ID3v2 footer at the end")
    return findings


def header_frame_text(data) -> bytes:
    """The bytes of the first frame when it is a Xing/Info/VBRI header frame (no audio), else b"".

    That frame's LAME tag names the encoder (ffmpeg reports it as the stream's ``encoder``); it is
    kept because players need its delay and padding for gapless playback.
    """
    first = frame_header(data, 0)
    if first is None:
        return b""
    frame = bytes(data[:first.length])
    return frame if any(marker in frame[:64] for marker in (b"Xing", b"Info", b"VBRI")) else b""


def inspect(path: Path) -> list[str]:
    import mutagen.mp3

    try:
        with mapped_file(path) as data:
            findings = structure_findings(data)
            header_frame = header_frame_text(data)
    except SanitizeError as e:
        return [f"the copy cannot be read: {e.message}"]
    return findings + reader_findings(path, mutagen.mp3.MP3, header_frame=header_frame)


FORMATS = [
    Format(name="mp3", kind="audio", media_type="audio/mpeg", accept=accept, locate=locate, rebuild=rebuild,
           inspect=inspect, extensions=(".mp3",)),
]
