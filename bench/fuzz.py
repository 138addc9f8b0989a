"""Long coverage-guided fuzzing of the walkers and location parsers with atheris (libFuzzer).

The same properties as tests/test_fuzz.py, for hours instead of seconds: any input gives a result
or a SanitizeError (or the parser's documented refusal), never another exception, never a long
call. Not part of CI.

    .venv/bin/pip install -e '.[fuzz]'              # atheris: a wheel for CPython 3.11 on x86-64 Linux;
                                                    # elsewhere pip builds it and needs clang >= 12
    .venv/bin/python -m bench.fuzz --seeds bench/fuzz-corpus      # write seed files from fixtures/
    .venv/bin/python -m bench.fuzz boxes bench/fuzz-corpus/boxes -max_total_time=3600 -timeout=5 -rss_limit_mb=1024

Targets: boxes, riff, aiff, jpeg, png, exif, xmp, iso6709 (see TARGETS). Arguments after the target
go to libFuzzer: a corpus folder (it grows there), `-max_total_time`, `-timeout` (seconds per input:
a slow walk is a finding), `-rss_limit_mb`, `-jobs`/`-workers`. A finding is written to
`crash-<sha1>` in the current folder; replay it with `python -m bench.fuzz TARGET crash-<sha1>`.
A finding in a file another helper owns goes into tests/test_fuzz.py as a strict xfail with the input.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Callable

import atheris

with atheris.instrument_imports(include=["worker"]):
    from worker import exif, xmp
    from worker.errors import SanitizeError
    from worker.formats.photo import jpeg, png
    from worker.formats.walkers import boxes, iff
    from worker.location import NoFix, normalise, parse_iso6709


def fuzz_boxes(data: bytes) -> None:
    f = io.BytesIO(data)
    handler = b""
    try:
        for _, box in boxes.walk(f, 0, len(data)):
            if box.type == b"hdlr" and box.payload_size >= 12:
                handler = boxes.read_payload(f, box, 64)[8:12]
            elif box.type == b"stbl":
                boxes.chunk_ranges(f, box, len(data))
            elif box.type in (b"mvhd", b"tkhd", b"mdhd"):
                boxes.mac_epoch_iso(boxes.header_times(boxes.read_payload(f, box, 1 << 16))[0])
            elif box.type == b"dref":
                boxes.dref_is_external(boxes.read_payload(f, box, 1 << 16))
            elif box.type == b"stsd":
                boxes.sample_entry_types(f, box)
                list(boxes.sample_entry_children(f, box, handler))
    except SanitizeError:
        pass


def _chunks(big_endian: bool) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        try:
            list(iff.iter_chunks(data, 12, len(data), big_endian=big_endian))
        except SanitizeError:
            pass
        if len(data) >= 12:
            iff.container_findings(data, big_endian=big_endian, kept=(b"fmt ", b"data"), required=(b"data",))
    return target


def fuzz_jpeg(data: bytes) -> None:
    try:
        jpeg.walk(data)
    except SanitizeError:
        pass


def fuzz_png(data: bytes) -> None:
    try:
        png.embedded(png.walk(data).chunks)
    except SanitizeError:
        pass


def fuzz_exif(data: bytes) -> None:
    exif.locate_in_exif(data)
    exif.describe_exif(data)
    exif.orientation_only_findings(data)


def fuzz_xmp(data: bytes) -> None:
    xmp.locate_in_xmp(data)


def fuzz_iso6709(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        lat, lon, alt = parse_iso6709(text)
        normalise(lat, lon, alt=alt, source="quicktime")
    except NoFix:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "boxes": fuzz_boxes, "riff": _chunks(False), "aiff": _chunks(True), "jpeg": fuzz_jpeg, "png": fuzz_png,
    "exif": fuzz_exif, "xmp": fuzz_xmp, "iso6709": fuzz_iso6709,
}


def write_seeds(folder: Path) -> None:
    """One folder of seed inputs a target, from the repository's fixtures (libFuzzer mutates from these)."""
    import tempfile

    from fixtures import audio, jpeg as jpeg_fixtures, lossless, video
    from fixtures.jpeg import NEW_YORK

    with tempfile.TemporaryDirectory() as tmp:
        made = {}
        for name, builder in {"mp4": video.android_like_mp4, "mov": video.iphone_like_mov,
                              "jpg": jpeg_fixtures.android_phone_jpeg, "png": lossless.png_with_text_and_exif,
                              "wav": audio.wav_with_info_and_bext, "aiff": audio.aiff_with_text,
                              "webp": lambda p: lossless.webp_with_exif_xmp(p, lossless=False)}.items():
            path = Path(tmp) / f"seed.{name}"
            builder(path)
            made[name] = path.read_bytes()
    seeds = {
        "boxes": {"mp4": made["mp4"], "mov": made["mov"]}, "riff": {"wav": made["wav"], "webp": made["webp"]},
        "aiff": {"aiff": made["aiff"]}, "jpeg": {"jpg": made["jpg"]}, "png": {"png": made["png"]},
        "exif": {"exif": lossless.exif_with_gps(*NEW_YORK, orientation=6)},
        "xmp": {"xmp": lossless.xmp_with_gps(*NEW_YORK)},
        "iso6709": {"dd": b"+40.7128-074.0060+010.000/", "dms": b"+404245.99-0740021.51/", "dm": b"+4042.76-07400.35/"},
    }
    for target, files in seeds.items():
        (folder / target).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / target / f"seed-{name}").write_bytes(data)
    print(f"seeds in {folder}/{{{','.join(seeds)}}}")


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[1] == "--seeds":
        write_seeds(Path(argv[2]))
        return
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m bench.fuzz {{{'|'.join(TARGETS)}}} [CORPUS_DIR] [libFuzzer options]\n"
                 "       python -m bench.fuzz --seeds FOLDER")
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
