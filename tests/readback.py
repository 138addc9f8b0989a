"""Independent readers for tests: ExifTool and ffprobe, as a reviewer would run them."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# ExifTool groups that say nothing about a person, place, device or time
TECHNICAL_GROUPS = {"File", "System", "ExifTool", "Composite", "JFIF", "Adobe", "ICC_Profile", "ICC-header",
                    "ICC-view", "ICC-meas", "ICC-chrm", "ICC-clrt", "ICC-lut", "PNG", "RIFF", "GIF",
                    "QuickTime", "Track1", "Track2", "Track3", "MPEG", "FLAC", "Vorbis", "Opus", "AIFF", "WAV"}
SENSITIVE_GROUP = re.compile(r"^(GPS|XMP.*|IPTC|Photoshop|IFD1|MPF0|MPImage\d*|MakerNotes|Apple|Google|ID3.*|APE|"
                             r"Keys|ItemList|UserData|ExifIFD|InteropIFD|SubIFD\d*|RIFF-INFO|Vorbis-Comments|"
                             r"FlashPix|Ducky|PrintIM|Samsung.*|Canon.*|Nikon.*|Sony.*|GoPro)$", re.I)
SENSITIVE_NAME = re.compile(r"(gps|latitude|longitude|location|iso6709|^make$|^model$|serial|software|artist|"
                            r"author|creator|copyright|owner|comment|description|^title$|album|keyword|"
                            r"datetimeoriginal|createdate|modifydate|^datetime$|thumbnail|preview|makernote|"
                            r"usercomment|picture|coverart|^encoder$|^genre$|^year$|^date$)", re.I)
ZERO_DATES = ("0000", "1904:01:01 00:00:00")
# fields whose names look personal but whose values here are fixed technical ones (ffmpeg, MPEG headers)
FIXED_TECHNICAL_VALUES = {"PreviewTime": {0}, "PreviewDuration": {0}, "CopyrightFlag": {0, 1, False, True},
                       "HandlerDescription": {"VideoHandler", "SoundHandler", "DataHandler"}}


def require_exiftool() -> str:
    exe = shutil.which("exiftool")
    if not exe:
        pytest.fail("exiftool is required (Debian: libimage-exiftool-perl); the README's test command installs it")
    return exe


def exiftool(path: Path) -> dict:
    """`exiftool -json -G1 -a -n` of one file, as a dict of 'Group:Tag' -> value."""
    # ExifTool exits 1 ("File format error") on some valid MP3s whose audio happens to look like an
    # MPEG-PS start code, yet still prints its reading; the JSON is what counts.
    proc = subprocess.run([require_exiftool(), "-json", "-G1", "-a", "-n", "-q", "-q", str(path)],
                          capture_output=True, text=True)
    if not proc.stdout.strip():
        raise AssertionError(f"exiftool could not read {path}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)[0]


def sensitive_tags(tags: dict) -> list[str]:
    """Tags that reveal a place, person, device or time (what the agency copy must not carry)."""
    found = []
    for key, value in tags.items():
        if ":" not in key:
            continue
        group, tag = key.split(":", 1)
        if group.startswith("ICC"):   # the kept colour profile: its description names the profile, not a person
            continue
        if group in ("File", "System", "ExifTool", "Composite"):
            if key == "File:Comment":
                found.append(key)
            continue
        if tag in ("CreateDate", "ModifyDate", "TrackCreateDate", "TrackModifyDate", "MediaCreateDate",
                   "MediaModifyDate") and str(value).startswith(ZERO_DATES):
            continue
        if group in TECHNICAL_GROUPS and not SENSITIVE_NAME.search(tag):
            continue
        if value in FIXED_TECHNICAL_VALUES.get(tag, ()):
            continue
        if SENSITIVE_GROUP.match(group) or SENSITIVE_NAME.search(tag):
            found.append(key)
    return found


def ffprobe(path: Path) -> dict:
    exe = shutil.which("ffprobe")
    if not exe:
        pytest.fail("ffprobe is required (Debian: ffmpeg); the README's test command installs it")
    out = subprocess.run([exe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          "-show_chapters", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def stream_hashes(path: Path) -> str:
    """ffmpeg's streamhash of the first video and first audio stream, packets copied, not decoded.

    `V` (not `v`) skips attached pictures: an M4A's cover art is not its first video stream.
    """
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:V:0?", "-map", "0:a:0?",
                           "-c", "copy", "-f", "streamhash", "-hash", "md5", "-"],
                          capture_output=True, text=True, check=True).stdout.strip()
