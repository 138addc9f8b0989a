"""The uploads of a chaos run: unique files of the families a phone sends, a few bad ones, and what
must become of each (the state, the copy's format or the rejection code)."""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Input:
    """One file to upload and what must become of it."""
    path: Path
    label: str
    sha256: str
    size: int
    state: str                 # done | rejected
    format: str | None = None  # the agency copy's format when done
    code: str | None = None    # the error code when rejected


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _mark_jpeg(base: Path, dest: Path, mark: str) -> None:
    import piexif
    shutil.copyfile(base, dest)
    exif = piexif.load(str(dest))
    exif["0th"][piexif.ImageIFD.ImageDescription] = mark.encode()
    piexif.insert(piexif.dump(exif), str(dest))


def _mark_png(base: Path, dest: Path, mark: str) -> None:
    from fixtures.lossless import insert_png_chunks, png_chunk
    shutil.copyfile(base, dest)
    insert_png_chunks(dest, png_chunk(b"tEXt", b"Comment\0" + mark.encode()))


def _mark_isobmff(base: Path, dest: Path, mark: str) -> None:
    from fixtures.video import box
    dest.write_bytes(base.read_bytes() + box(b"free", mark.encode()))


def _mark_mp3(base: Path, dest: Path, mark: str) -> None:
    from mutagen.id3 import ID3, TXXX
    shutil.copyfile(base, dest)
    tags = ID3(dest)
    tags.add(TXXX(encoding=3, desc="upload", text=mark))
    tags.save(dest, v2_version=4, v1=1)


# (label, base builder, how one upload is made unique from the base, state, copy format, code)
GOOD_KINDS = {
    "android-jpeg": ("fixtures.jpeg:android_phone_jpeg", ".jpg", _mark_jpeg, "jpeg"),
    "iphone-jpeg": ("fixtures.jpeg:iphone_like_jpeg", ".jpg", _mark_jpeg, "jpeg"),
    "png": ("fixtures.lossless:png_with_text_and_exif", ".png", _mark_png, "png"),
    "mp4": ("fixtures.video:android_like_mp4", ".mp4", _mark_isobmff, "mp4"),
    "m4a": ("fixtures.video:voice_memo_m4a", ".m4a", _mark_isobmff, "m4a"),
    "mp3": ("fixtures.audio:mp3_with_all_tags", ".mp3", _mark_mp3, "mp3"),
}
BAD_KINDS = ("html", "truncated-jpeg", "empty")
# the order uploads cycle through: mostly what phones send, two bad files in every twelve
ROTATION = ("android-jpeg", "mp4", "png", "iphone-jpeg", "m4a", "BAD",
            "mp3", "android-jpeg", "png", "mp4", "iphone-jpeg", "BAD")


def _builder(spec: str):
    import importlib
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def build_inputs(folder: Path, count: int) -> list[Input]:
    """``count`` distinct files: every one has its own bytes, so an original stored under the wrong
    upload shows as a sha256 mismatch."""
    folder.mkdir(parents=True, exist_ok=True)
    bases: dict[str, Path] = {}
    inputs: list[Input] = []
    bad = 0
    for n in range(count):
        label = ROTATION[n % len(ROTATION)]
        mark = f"chaos-upload-{n:05d}"
        if label == "BAD":
            label = BAD_KINDS[bad % len(BAD_KINDS)]
            bad += 1
            path = folder / f"{n:05d}-{label}.jpg"      # every bad file claims to be a JPEG by its name
            if label == "html":
                path.write_bytes(f"<html><body>not a photo: {mark}</body></html>".encode())
                code = "unsupported_format"
            elif label == "truncated-jpeg":
                if "iphone-jpeg" not in bases:
                    bases["iphone-jpeg"] = folder / "base-iphone-jpeg.jpg"
                    _builder(GOOD_KINDS["iphone-jpeg"][0])(bases["iphone-jpeg"])
                whole = bases["iphone-jpeg"].read_bytes()
                path.write_bytes(whole[:40 + (n % 900)])   # cut inside the headers: nothing decodes
                code = "truncated"
            else:
                path.write_bytes(b"")
                code = "empty"
            inputs.append(Input(path, label, sha256_of(path), path.stat().st_size, "rejected", code=code))
            continue
        spec, ext, marker, copy_format = GOOD_KINDS[label]
        if label not in bases:
            bases[label] = folder / f"base-{label}{ext}"
            _builder(spec)(bases[label])
        path = folder / f"{n:05d}-{label}{ext}"
        marker(bases[label], path, mark)
        inputs.append(Input(path, label, sha256_of(path), path.stat().st_size, "done", format=copy_format))
    return inputs
