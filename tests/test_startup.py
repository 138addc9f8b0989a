"""`mediasan sanitize` starts fast (#10): what it imports, and what its lazy shortcuts must not change.

The start time itself is measured by bench/run, not asserted here (the machine is shared). These
tests hold the things that make it fast, which a later edit can silently undo: sanitizing a JPEG
imports no typer/click/rich, no pydantic, no audio or video family; the registry's magic
prefilters never refuse a file a family would accept; the shortcut past pydantic-settings gives
exactly the Settings defaults, and anything configured still goes through Settings.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CORPUS, ROOT

# never imported by `sanitize` on a JPEG: the CLI framework, settings validation, other families,
# and the standard modules a usual call does without (argparse's parser, dataclasses and inspect,
# shutil with bz2 and lzma, the process pool)
HEAVY = re.compile(r"^(typer|click|rich|pydantic|pydantic_core|pydantic_settings|celery|sqlalchemy|boto3|botocore"
                   r"|worker\.settings|worker\.formats\.av(\..*)?|worker\.formats\.photo\.(png|webp|gif|heif|tiff|reencode)"
                   r"|argparse|dataclasses|inspect|shutil|multiprocessing|concurrent\.futures(\..*)?"
                   r"|pillow_heif|mutagen|ffmpeg)$")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MEDIASAN_")}
    return dict(env, PYTHONPATH=str(ROOT), **extra)


def imported_by(module: str, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -m MODULE ARGS…` and name every module it imported (sys.modules at exit: unlike
    -X importtime this sees importlib.import_module too, which is how the registry loads families)."""
    script = ("import atexit, json, runpy, sys\n"
              "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
              f"sys.argv = [{module!r}, *{args!r}]\n"
              f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    listed = re.search(r"^MODULES (.*)$", proc.stderr, re.M)
    assert listed, proc.stderr[-2000:]
    return proc, set(json.loads(listed.group(1)))


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from fixtures.jpeg import iphone_like_jpeg

    # no motion-photo trailer: reading an embedded video's location rightly imports the MP4 walker
    path = tmp_path_factory.mktemp("photo") / "IMG_1.jpg"
    iphone_like_jpeg(path)
    return path


@pytest.mark.parametrize("module", ["worker.cli", "worker.cli_sanitize"])
def test_sanitizing_a_jpeg_imports_nothing_it_does_not_need(photo, tmp_path, module):
    # worker.cli_sanitize:main is the console script; `python -m worker.cli` is how scripts and tests run it
    proc, names = imported_by(module, ["sanitize", str(photo), "--out", str(tmp_path / "out"), "--json"],
                              tmp_path, clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["status"] == "sanitized"
    assert "worker.formats.photo.jpeg" in names and "PIL.Image" in names   # the parse above saw the imports
    assert sorted(n for n in names if HEAVY.match(n)) == []


def test_sanitizing_an_mp3_imports_no_photo_or_video_family(tmp_path):
    """The copy's format is looked up among the families already imported: an MP3 imports neither
    Pillow nor the photo and video families listed before it (#10)."""
    from fixtures.audio import mp3_with_all_tags

    src = mp3_with_all_tags(tmp_path / "voice.mp3")
    proc, names = imported_by("worker.cli_sanitize", ["sanitize", str(src), "--out", str(tmp_path / "out"), "--json"],
                              tmp_path, clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["status"] == "sanitized"
    assert "worker.formats.av.mp3" in names and "mutagen.mp3" in names
    assert sorted(n for n in names if re.match(r"^(PIL|worker\.formats\.photo\.(?!proof$)\w+"
                                              r"|worker\.formats\.av\.(isobmff|matroska|av_\w+))(\..*)?$", n)) == []


def test_a_configured_setting_is_read_through_settings(photo, tmp_path):
    # a MEDIASAN_ variable takes the full Settings path: the limit applies (and pydantic is paid for)
    proc, names = imported_by("worker.cli", ["sanitize", str(photo), "--out", str(tmp_path / "a"), "--json"],
                              tmp_path, clean_env(MEDIASAN_MAX_BYTES="1000"))
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["code"] == "too_large"
    assert "worker.settings" in names
    # so does a .env file in the working folder, which pydantic-settings reads
    (tmp_path / ".env").write_text("MEDIASAN_MAX_BYTES=1000\n")
    proc, _ = imported_by("worker.cli", ["sanitize", str(photo), "--out", str(tmp_path / "b"), "--json"],
                          tmp_path, clean_env())
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["code"] == "too_large"


def test_the_unconfigured_shortcut_is_exactly_the_settings_defaults(tmp_path, monkeypatch):
    from worker.cli_sanitize import configured, sanitize_settings
    from worker.settings import Settings

    for name in list(os.environ):
        if name.upper().startswith("MEDIASAN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    assert not configured()
    defaults = Settings(_env_file=None)
    assert sanitize_settings() == (defaults.resolved_work_dir(), defaults.limits(), defaults.log_format)
    monkeypatch.setenv("mediasan_max_pixels", "5")      # pydantic-settings matches names in any case
    assert configured()


def test_help_is_the_one_definition_whichever_way_it_is_reached(tmp_path):
    env = clean_env()
    direct = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    via_typer = subprocess.run([sys.executable, "-c", "import sys; from worker.cli import app; "
                                "sys.argv = ['mediasan', 'sanitize', '--help']; app()"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert direct.returncode == via_typer.returncode == 0
    assert direct.stdout == via_typer.stdout and "--jobs" in direct.stdout and "--out" in direct.stdout
    listing = subprocess.run([sys.executable, "-m", "worker.cli", "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert re.search(r"sanitize\s+Write the agency copy", listing.stdout)
    usage = subprocess.run([sys.executable, "-m", "worker.cli", "sanitize", "x.jpg"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--out" in usage.stderr


USUAL_CALLS = [
    ["a.jpg", "--out", "o"], ["--json", "--out", "o", "a.jpg", "b.mp4"], ["a.jpg", "b.jpg", "--json", "--out", "o"],
    ["--jobs", "3", "a.jpg", "--out", "o"], ["-j", "1", "--out", "o", "--json", "a"], ["--out", "o", "--out", "p", "a"],
    ["-j", "2", "-j", "04", "--out", "o", "", "a"], ["--out", "o", "--json", "--json", "a"],
]
# argparse's to read: help, mistakes, abbreviations, other spellings, things that look like options
OTHER_CALLS = [
    ["--help"], ["a.jpg"], ["--out", "o"], ["a", "--out", "o", "b"], ["a", "--out"], ["--out=o", "a"],
    ["-j2", "--out", "o", "a"], ["--js", "--out", "o", "a"], ["--ou", "o", "a"], ["-j", "0", "--out", "o", "a"],
    ["-j", "x", "--out", "o", "a"], ["-j", "\u0663", "--out", "o", "a"], ["-j", " 3", "--out", "o", "a"],
    ["--out", "-5", "a"], ["--out", "o", "-5"], ["--out", "o", "-"], ["--out", "o", "--", "-a"],
    ["--out", "o", "a", "--bogus"],
]


@pytest.mark.parametrize("argv", USUAL_CALLS + OTHER_CALLS)
def test_the_usual_call_is_read_as_argparse_reads_it(argv):
    """``common_call`` reads the usual call without building the parser, exactly as argparse reads
    it; everything else it leaves to argparse (help, usage errors, the other spellings)."""
    from worker.cli_sanitize import common_call, parser

    fast = common_call(argv)
    assert (fast is not None) == (argv in USUAL_CALLS)
    if fast is not None:
        assert {name: getattr(fast, name) for name in fast.__slots__} == vars(parser().parse_args(argv))


def sample_files(folder: Path) -> list[Path]:
    """One file of every kind the fixtures make, the hostile corpus, and the real-device corpus."""
    from fixtures import audio, heif, hostile, jpeg, lossless, video, webm

    builders = [jpeg.android_phone_jpeg, jpeg.iphone_like_jpeg, jpeg.cmyk_adobe_jpeg, jpeg.progressive_restart_jpeg,
                lossless.png_with_text_and_exif, lossless.apng, lossless.animated_webp,
                lossless.animated_gif_with_comment, heif.iphone_like_heic, heif.avif_with_exif, heif.tiff_with_gps,
                audio.mp3_with_all_tags, audio.flac_with_picture, audio.ogg_vorbis_with_comments,
                audio.opus_with_comments, audio.wav_with_info_and_bext, audio.aiff_with_text, audio.amr_voice_note,
                video.iphone_like_mov, video.android_like_mp4, video.voice_memo_m4a, video.loci_3gp,
                webm.webm_vp9_opus, webm.mkv_h264_aac, webm.ogg_theora_vorbis]
    made = []
    for builder in builders:
        path = folder / builder.__name__
        builder(path)
        made.append(path)
    webp = folder / "webp_lossy"
    lossless.webp_with_exif_xmp(webp, lossless=False)
    made.append(webp)
    made += [case.path for case in hostile.build_all(folder / "hostile") if case.path.is_file()]
    if CORPUS.exists():
        made += sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix not in (".tsv", ".json", ".md"))
    return made


def test_prefilters_never_refuse_what_a_family_accepts(tmp_path):
    from worker import formats
    from worker.errors import SanitizeError

    files = sample_files(tmp_path)
    assert len(files) >= 26
    accepted_by: set[str] = set()
    for path in files:
        head = formats.read_head(path)
        for family, might in formats.FAMILIES:
            if any(fmt.accept(head) for fmt in formats.family_formats(family)):
                accepted_by.add(family)
                assert might(head), f"{family}'s prefilter refuses {path} ({head[:12].hex()}), which it accepts"
        # and the lazy identify answers what trying every format in order answers
        eager = next((fmt.name for fmt in formats.all_formats() if head and fmt.accept(head)), None)
        try:
            lazy = formats.identify(path).name
        except SanitizeError:
            lazy = None
        assert lazy == eager, path
    assert accepted_by == {family for family, _ in formats.FAMILIES}   # every prefilter was exercised


# what a plain JPEG (no EXIF, no XMP) must not pull in: each was a measurable part of the start
LAZY = ("socket", "tempfile", "datetime", "xml.etree.ElementTree", "PIL.PngImagePlugin",
        "PIL.GifImagePlugin", "PIL.BmpImagePlugin", "PIL.PpmImagePlugin")


def test_a_plain_jpeg_imports_no_parser_or_plugin_it_does_not_use(tmp_path):
    from PIL import Image

    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(plain)
    proc, names = imported_by("worker.cli_sanitize", ["sanitize", str(plain), "--out", str(tmp_path / "out"), "--json"],
                              tmp_path, clean_env())
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "sanitized", proc.stderr[-2000:]
    assert "PIL.JpegImagePlugin" in names
    assert sorted(n for n in LAZY if n in names) == []


def test_the_work_folder_names_the_host_as_socket_does():
    import socket

    from worker import workdir

    assert workdir._host() == re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64]


def test_tempfile_imported_inside_a_scope_writes_there_and_is_restored_after(tmp_path):
    # in a fresh interpreter, so that tempfile is first imported inside the scope
    script = ("import os, sys\n"
              "from worker import workdir\n"
              "assert 'tempfile' not in sys.modules\n"
              f"with workdir.process_scope({str(tmp_path / 'work')!r}) as folder:\n"
              "    import tempfile\n"
              "    inside = tempfile.gettempdir()\n"
              "    assert inside == str(folder / 'tmp'), (inside, folder)\n"
              "assert tempfile.tempdir is None and 'TMPDIR' not in os.environ\n"
              "assert tempfile.gettempdir() != inside\n")
    env = {k: v for k, v in clean_env().items() if k != "TMPDIR"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_jpeg_header_shortcut_finds_what_image_open_finds(tmp_path):
    from PIL import Image

    from worker.verify import pillow_header_findings

    exif = Image.Exif()
    exif[0x010F] = "Maker"                       # a tag besides Orientation
    exif.get_ifd(0x8825)[2] = (40.0, 42.0, 46.0)  # GPS
    dirty = tmp_path / "copy.jpg.partial"        # the verifier's own name: no extension Pillow knows
    Image.new("RGB", (16, 16)).save(dirty, "JPEG", exif=exif.tobytes(), comment=b"hello")
    findings = pillow_header_findings(dirty, "jpeg")
    assert findings == pillow_header_findings(dirty)
    assert any("EXIF tags besides Orientation" in f for f in findings)
    assert any("0x8825" in f for f in findings) and any("comment" in f for f in findings)
    # not a JPEG after all (our sniffer would not say so, but the shortcut must not hide it)
    png = tmp_path / "other.partial"
    Image.new("RGB", (4, 4)).save(png, "PNG", pnginfo=None)
    assert pillow_header_findings(png, "jpeg") == pillow_header_findings(png) == []
    broken = tmp_path / "broken.partial"
    broken.write_bytes(b"\xff\xd8\xff" + b"\x00" * 20)
    assert pillow_header_findings(broken, "jpeg") == pillow_header_findings(broken)
    assert pillow_header_findings(broken, "jpeg")[0].startswith("Pillow cannot read the copy")
