"""Realistic-size benchmark samples: what a phone uploads, not the tiny fixtures the tests use.

Deterministic (fixed seeds, no clock), built once per run into a folder. Metadata helpers come from
``fixtures/`` when those modules exist; each builder falls back to its own minimal version otherwise,
so the benchmark runs while other fixture modules are still being written.
"""
from __future__ import annotations

import io
import random
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import piexif
from PIL import Image, ImageCms, ImageDraw

NEW_YORK = (40.712776, -74.005974)
PHOTO_SIZE = (4000, 3000)          # 12 MP, as most phone main cameras
VIDEO_SECONDS = 10
AUDIO_SECONDS = 180


# --- metadata helpers (the fixtures' when present) ---------------------------------------------

def _gps_ifd(lat: float, lon: float) -> dict:
    try:
        from fixtures.jpeg import gps_ifd
        return gps_ifd(lat, lon, alt=10.5, accuracy=12.0)
    except ImportError:
        def dms(v: float) -> tuple:
            v = abs(v)
            d = int(v)
            m = int((v - d) * 60)
            return ((d, 1), (m, 1), (round((v - d - m / 60) * 3600 * 10000), 10000))
        return {piexif.GPSIFD.GPSLatitudeRef: b"N" if lat >= 0 else b"S", piexif.GPSIFD.GPSLatitude: dms(lat),
                piexif.GPSIFD.GPSLongitudeRef: b"E" if lon >= 0 else b"W", piexif.GPSIFD.GPSLongitude: dms(lon)}


def _xmp(lat: float, lon: float) -> bytes:
    props = ('exif:GPSLatitude="40,42.76656N" exif:GPSLongitude="74,0.35844W" '
             'xmp:CreateDate="2024-05-17T10:05:09-04:00" xmp:CreatorTool="HDR+ 1.0"/>')
    try:
        from fixtures.jpeg import xmp_packet
        return xmp_packet(props)
    except ImportError:
        return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                '<rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
                f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" {props}</rdf:RDF></x:xmpmeta>').encode()


def _icc() -> bytes:
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = bytes(12)     # zero the creation date: repeatable files
    return bytes(icc)


def phone_picture(size: tuple[int, int] = PHOTO_SIZE, seed: int = 311) -> Image.Image:
    """Gradients, shapes and seeded sensor-like noise: compresses like a real photo (a few MB as JPEG)."""
    w, h = size
    r = Image.linear_gradient("L").resize(size)
    g = Image.radial_gradient("L").resize(size)
    b = r.transpose(Image.Transpose.ROTATE_180)
    im = Image.merge("RGB", (r, g, b))
    draw = ImageDraw.Draw(im)
    rng = random.Random(seed)
    for _ in range(60):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.rectangle([x, y, x + rng.randrange(50, 600), y + rng.randrange(50, 400)],
                       fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    tile = Image.frombytes("RGB", (509, 509), rng.randbytes(509 * 509 * 3))   # odd size: no 8x8 alignment
    noise = Image.new("RGB", size)
    for x in range(0, w, 509):
        for y in range(0, h, 509):
            noise.paste(tile, (x, y))
    return Image.blend(im, noise, 0.10)


def phone_exif(im: Image.Image, thumbnail: bool = True) -> bytes:
    exif = {
        "0th": {piexif.ImageIFD.Make: b"Google", piexif.ImageIFD.Model: b"Pixel 7",
                piexif.ImageIFD.Software: b"HDR+ 1.0.540104767zd", piexif.ImageIFD.DateTime: b"2024:05:17 10:05:09",
                piexif.ImageIFD.Orientation: 1},
        "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2024:05:17 10:05:09", piexif.ExifIFD.OffsetTimeOriginal: b"-04:00",
                 piexif.ExifIFD.MakerNote: b"HDRP\x02\x00" + bytes(range(256)) * 16,
                 piexif.ExifIFD.BodySerialNumber: b"27161FDH2008X1"},
        "GPS": _gps_ifd(*NEW_YORK),
    }
    if thumbnail:      # phones write a 160x120 (or so) thumbnail of the uncropped picture in IFD1
        thumb = im.copy()
        thumb.thumbnail((160, 120))
        out = io.BytesIO()
        thumb.save(out, "JPEG", quality=80)
        exif["1st"] = {piexif.ImageIFD.Compression: 6, piexif.ImageIFD.XResolution: (72, 1),
                       piexif.ImageIFD.YResolution: (72, 1)}
        exif["thumbnail"] = out.getvalue()
    return piexif.dump(exif)


def _tiff_exif(blob: bytes) -> bytes:
    return blob[6:] if blob.startswith(b"Exif\x00\x00") else blob


# --- builders: each writes one file at ``path`` ---------------------------------------------------

def jpeg(path: Path) -> None:
    im = phone_picture()
    im.save(path, "JPEG", quality=92, exif=phone_exif(im), xmp=_xmp(*NEW_YORK), icc_profile=_icc())


def png(path: Path) -> None:
    from PIL import PngImagePlugin
    im = phone_picture(seed=312)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken on my way home from 12 Elm Street")
    info.add_itxt("XML:com.adobe.xmp", _xmp(*NEW_YORK).decode())
    im.save(path, "PNG", pnginfo=info, exif=_tiff_exif(phone_exif(im, thumbnail=False)), icc_profile=_icc(),
            compress_level=6)


def webp(path: Path) -> None:
    im = phone_picture(seed=313)
    im.save(path, "WEBP", quality=80, method=4, exif=_tiff_exif(phone_exif(im, thumbnail=False)),
            xmp=_xmp(*NEW_YORK), icc_profile=_icc())


def heic(path: Path) -> None:
    import pillow_heif     # ImportError: the caller skips HEIC
    im = phone_picture(seed=314)
    heif = pillow_heif.HeifFile()
    primary = heif.add_frombytes("RGB", im.size, im.tobytes())
    primary.info.update(exif=phone_exif(im, thumbnail=False), icc_profile=_icc(), icc_profile_type="prof",
                        xmp=_xmp(*NEW_YORK), thumbnails=[320])
    # iPhones code the primary as a grid of 512x512 tiles; x265's slower presets take minutes at 12 MP
    heif.save(path, quality=80, enc_params={"preset": "ultrafast"}, tiling={"tile_width": 512, "tile_height": 512})


def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not installed")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _append_xyz(path: Path, text: str) -> None:
    """Put a ©xyz (ISO 6709) udta into moov as Android/iOS do (the fixtures' helper when present)."""
    try:
        from fixtures.video import append_to_moov, box, xyz_atom
    except ImportError:
        return
    append_to_moov(path, box(b"udta", xyz_atom(text)))


def mp4(path: Path) -> None:
    """10 s of 1080p30 H.264 (~16 Mb/s, like a phone) + AAC stereo, with a location and creation time."""
    lat, lon = NEW_YORK
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=30:duration={VIDEO_SECONDS},noise=alls=12:allf=t",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={VIDEO_SECONDS}:sample_rate=48000",
            "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "16M", "-maxrate", "16M", "-bufsize", "8M",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ac", "2",
            "-metadata", "creation_time=2024-05-17T14:05:09Z", "-metadata", "com.android.version=14",
            "-f", "mp4", str(path))
    _append_xyz(path, f"{lat:+08.4f}{lon:+09.4f}/")


def m4a(path: Path) -> None:
    """A 3-minute voice note: AAC mono 64 kb/s, title/artist tags and a ©xyz location."""
    lat, lon = NEW_YORK
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=220:duration={AUDIO_SECONDS}:sample_rate=44100",
            "-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.05:seed=7:duration={AUDIO_SECONDS}:sample_rate=44100",
            "-filter_complex", "amix=inputs=2", "-c:a", "aac", "-b:a", "64k", "-ac", "1",
            "-metadata", "title=Noise complaint, 12 Elm St", "-metadata", "artist=Jane Citizen",
            "-f", "mp4", "-brand", "M4A ", str(path))
    _append_xyz(path, f"{lat:+08.4f}{lon:+09.4f}+012.5/")


def mp3(path: Path) -> None:
    """A 3-minute MP3 voice note (LAME 64 kb/s mono) behind ID3v2.4 with a cover picture, and ID3v1."""
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=220:duration={AUDIO_SECONDS}:sample_rate=44100",
            "-f", "lavfi", "-i", f"anoisesrc=color=pink:amplitude=0.05:seed=7:duration={AUDIO_SECONDS}:sample_rate=44100",
            "-filter_complex", "amix=inputs=2", "-c:a", "libmp3lame", "-b:a", "64k", "-ac", "1",
            "-write_xing", "1", "-id3v2_version", "0", "-f", "mp3", str(path))
    from mutagen.id3 import APIC, COMM, ID3, TIT2, TPE1
    cover = io.BytesIO()
    pic = phone_picture((600, 600), seed=315)
    pic.save(cover, "JPEG", quality=85, exif=phone_exif(pic, thumbnail=False))
    tags = ID3()
    tags.add(TIT2(encoding=3, text="Noise complaint, 12 Elm St"))
    tags.add(TPE1(encoding=3, text="Jane Citizen"))
    tags.add(COMM(encoding=3, lang="eng", desc="", text="recorded at 40.7128,-74.0060"))
    tags.add(APIC(encoding=3, mime="image/jpeg", type=3, desc="cover", data=cover.getvalue()))
    tags.save(path, v2_version=4, v1=2)


# name -> (file name, builder, what it is)
SAMPLES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "jpeg": ("photo.jpg", jpeg, "12 MP phone JPEG q92, EXIF GPS + 160x120 thumbnail, XMP, ICC"),
    "png": ("photo.png", png, "12 MP PNG, eXIf GPS, iTXt XMP, text, ICC"),
    "webp": ("photo.webp", webp, "12 MP lossy WebP q80, EXIF GPS, XMP, ICC"),
    "heic": ("photo.heic", heic, "12 MP HEIC q80, 512x512 grid, EXIF GPS, XMP, ICC, thumbnail"),
    "mp4": ("video.mp4", mp4, "10 s 1080p30 H.264 16 Mb/s + AAC, ©xyz, creation time"),
    "m4a": ("voice.m4a", m4a, "3 min AAC mono 64 kb/s voice note, tags, ©xyz"),
    "mp3": ("voice.mp3", mp3, "3 min MP3 mono 64 kb/s, ID3v2.4 with cover, ID3v1"),
}


def build(name: str, folder: Path) -> Path:
    """Build sample ``name`` into ``folder`` unless a complete one is already there; return its path."""
    filename, builder, _ = SAMPLES[name]
    path = folder / filename
    if path.exists() and path.stat().st_size > 0:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ("building-" + filename)     # the real extension last: Pillow picks the encoder by it
    if tmp.exists():
        tmp.unlink()
    builder(tmp)
    tmp.rename(path)
    return path


if __name__ == "__main__":      # python -m bench.samples NAME FOLDER: build in a process of its own
    import sys
    print(build(sys.argv[1], Path(sys.argv[2])))
