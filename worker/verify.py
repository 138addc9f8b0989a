"""Verify an agency copy with readers other than the one that wrote it. Fail closed.

Independent looks: identify the copy by content again (it must be the format the rebuild
declared), the format's own structure walk (``Format.inspect``) against its allow-list, and for
photos Pillow's header parse (``Image.open``: info, applist, EXIF, ICC; no pixel decode) that
must show no EXIF beyond Orientation, no XMP, no text, and an ICC profile with nothing but colour.

Then the picture itself. Where the copy is the input's own coded image data (JPEG, PNG/APNG,
WebP, GIF copied losslessly) it is proved by bytes: ``formats.photo.proof`` walks input and copy
on its own and their image-defining parts must be identical, which proves identical pixels for
every frame without decoding any. Where pixels were produced (HEIC/AVIF/TIFF re-encoded, a
damaged photo salvaged) the copy is decoded in full. Audio and video modules do their ffprobe and
mutagen checks inside their ``inspect``; a family whose copy is a stream copy of the input's packets
(ISO-BMFF: ``Format.inspect_copy_of``) is given the input too, and proves the copy's coded samples
and decoder configuration identical to the input's instead of decoding the copy again.
"""
from __future__ import annotations

import functools
from pathlib import Path

from worker import formats, icc
from worker.answers import recall
from worker.errors import SanitizeError, verify_failed
from worker.formats.base import Rebuilt
from worker.formats.photo import file_bytes, forget_file
from worker.formats.photo.proof import IMAGE_PROOFS, differences

# Pillow `info` keys that are pure rendering data; anything else in `info` is a finding.
PILLOW_TECHNICAL_INFO = frozenset({
    "icc_profile", "dpi", "jfif", "jfif_version", "jfif_unit", "jfif_density", "adobe", "adobe_transform",
    "progressive", "progression", "interlace", "gamma", "srgb", "chromaticity", "transparency", "background",
    "duration", "loop", "version", "extension", "aspect", "bbox", "blend", "disposal", "default_image",
    "compression", "resolution", "mode", "palette", "optimize", "quality", "subsampling", "tile",
    "sbit", "frame_count", "timestamp", "minimum_frame_duration", "num_plays", "use_dib",
})
ORIENTATION_TAG = 0x0112


def _metadata_findings(im, frame: int = 0, decoded: bool = True) -> list[str]:
    findings: list[str] = []
    # "exif" is judged by its content below (an Orientation-only EXIF may stay), not by presence
    extra = sorted(k for k in im.info if str(k).lower() not in PILLOW_TECHNICAL_INFO | {"exif"})
    findings += [f"Pillow info key {k!r} in frame {frame}" for k in extra]
    if decoded or im.format in ("JPEG", "MPO"):
        # a JPEG's EXIF is in its header, and its plugin parsed it already when it looked for a DPI
        exif = im.getexif()
    else:
        # getexif() would decode a PNG to look for a late eXIf; the header's own EXIF is read
        # instead, and the format's walk (``inspect``) checks every eXIf wherever it sits
        from PIL import Image

        exif = Image.Exif()
        if im.info.get("exif"):
            exif.load(im.info["exif"])
    tags = {t for t in exif if t != ORIENTATION_TAG}
    if tags:
        findings.append(f"EXIF tags besides Orientation: {sorted(tags)}")
    for ifd in (0x8825, 0x8769, 0xA005):   # GPS, Exif, Interop sub-IFDs
        if exif.get_ifd(ifd):
            findings.append(f"EXIF sub-IFD {ifd:#06x} present")
    if getattr(im, "applist", None):
        kept = {m for m, _ in im.applist} - {"APP0", "APP2", "APP14"}
        if kept - {"APP1"}:
            findings.append(f"JPEG segments outside the allow-list: {sorted(kept)}")
    profile = im.info.get("icc_profile")
    if profile:
        findings += icc.findings(profile)
        findings += list(_lcms_findings(profile))
    return findings


@functools.lru_cache(maxsize=32)
def _lcms_findings(profile: bytes) -> tuple[str, ...]:
    """LittleCMS's own reading of the profile's text: a second reader beside ``icc.findings``."""
    import io

    from PIL import ImageCms

    try:
        cms = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        description = ImageCms.getProfileDescription(cms).strip()
        copyright_text = ImageCms.getProfileCopyright(cms).strip()
        maker = (ImageCms.getProfileManufacturer(cms) + ImageCms.getProfileModel(cms)).strip()
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        return (f"LittleCMS cannot read the copy's ICC profile: {e}",)
    found = []
    if description != icc.NEUTRAL_DESCRIPTION:
        found.append(f"ICC description {description[:40]!r}")
    if copyright_text or maker:
        found.append("ICC copyright, maker or model text")
    return tuple(found)


def _open_header(path: Path, format_name: str | None, data: bytes | None = None):
    """``Image.open`` of the copy (its ``data`` when given, read once by the caller, else ``path``);
    for a JPEG copy, the JPEG plugin's own factory first.

    The copy's name ends in ``.partial``, so Image.open cannot choose a plugin by extension and
    imports five (BMP, GIF, JPEG, PPM, PNG), a tenth of a one-file run's start (#10). The factory
    is what Image.open calls for a JPEG (it hands back an MPO where there is one), behind the same
    magic check and followed by the same decompression-bomb check; whatever the JPEG plugin
    refuses goes on to Image.open and every other plugin, as before.
    """
    import io
    import struct

    from PIL import Image

    # the caller's bytes when it has read them; the path otherwise (Pillow names it in its errors)
    source = io.BytesIO(data) if data is not None else path
    if format_name == "jpeg":
        from PIL import JpegImagePlugin

        if data is not None:
            magic = data[:3]
        else:
            with open(path, "rb") as f:
                magic = f.read(3)
        if magic == b"\xff\xd8\xff":
            try:
                im = JpegImagePlugin.jpeg_factory(source if data is not None else str(path), str(path))
            except (SyntaxError, IndexError, TypeError, struct.error):
                pass   # as Image.open's own loop does: the next plugin may read it (Image.open seeks to 0)
            else:
                try:
                    Image._decompression_bomb_check(im.size)
                except BaseException:
                    im.close()
                    raise
                return im
    return Image.open(source)


def pillow_header_findings(path: Path, format_name: str | None = None, data: bytes | None = None) -> list[str]:
    """Pillow's header parse of the copy (no pixel decode): whatever metadata it exposes. ``data``:
    the copy's bytes, when the caller has read them already."""
    try:
        with _open_header(path, format_name, data) as im:
            return _metadata_findings(im, decoded=False)
    except (SanitizeError, MemoryError):
        raise   # past the memory budget the sanitizer answers too_large; either way nothing is published
    except Exception as e:  # noqa: BLE001 - a copy Pillow cannot even open is not publishable
        return [f"Pillow cannot read the copy: {type(e).__name__}: {e}"]


def pillow_findings(path: Path) -> list[str]:
    """Decode the copy with Pillow, every frame, and list whatever metadata it still exposes."""
    from PIL import Image

    findings: list[str] = []
    try:
        with Image.open(path) as im:
            im.load()
            frames = getattr(im, "n_frames", 1)
            for index in range(frames):
                if index:
                    im.seek(index)
                    im.load()
                findings += _metadata_findings(im, index)
    except (SanitizeError, MemoryError):
        raise   # past the memory budget the sanitizer answers too_large; either way nothing is published
    except Exception as e:  # noqa: BLE001 - any decoder failure means the copy is not publishable
        findings.append(f"Pillow cannot decode the copy: {type(e).__name__}: {e}")
    return findings


def verify_copy(path: Path, rebuilt: Rebuilt, source: Path | None = None, source_format: str | None = None) -> None:
    """Raise SanitizeError(verify_failed) unless the copy at ``path`` is clean and shows the media.

    ``source`` is the input: a lossless photo copy, or a stream copy of an ISO-BMFF movie, is proved
    against it by bytes. Without it (or for a copy whose pixels were produced: a re-encode, a
    salvage; or an input whose sample tables give no proof) the copy is decoded instead.
    ``source_format`` is the input's format as the sanitizer identified it (else it is identified
    here). Each photo is read once (``file_bytes``): the input's bytes are the ones its walk read,
    the copy's serve its walk (``inspect``), Pillow's header parse and the proof, each on its own.
    """
    try:
        # a photo copy is read whole once anyway (``file_bytes``: its walk, Pillow, the proof), so
        # it is identified from those bytes rather than opened and read a second time
        fmt = formats.identify(path, file_bytes(path) if _declared_kind(rebuilt) == "photo" else None)
    except SanitizeError as e:
        raise verify_failed(f"the copy is not recognisable: {e.message}") from None
    if fmt.name != rebuilt.format:
        raise verify_failed(f"the copy reads as {fmt.name}, the rebuild declared {rebuilt.format}")
    if source is not None and fmt.inspect_copy_of is not None:
        findings = list(fmt.inspect_copy_of(path, source))
    else:
        findings = list(fmt.inspect(path))
    if fmt.kind == "photo":
        if source is not None and _copied_losslessly(source, rebuilt, source_format):
            copy = file_bytes(path)   # the bytes its walk (inspect) read
            findings += pillow_header_findings(path, fmt.name, copy)
            findings += differences(fmt.name, file_bytes(source), copy)
        elif _decoded_by_the_rebuild(path):
            # pixels produced (a re-encode) and already decoded whole by the rebuild's quality
            # check, which compared them with the picture: the same decode of the same bytes is not
            # run twice; Pillow's header parse still reads what the copy holds
            findings += pillow_header_findings(path, fmt.name, file_bytes(path))
        else:
            forget_file(path)   # its walk (inspect) is done; the decode reads the file on its own
            findings += pillow_findings(path)
    if findings:
        raise verify_failed("the copy still holds: " + "; ".join(findings[:10]))


def _decoded_by_the_rebuild(path: Path) -> bool:
    from worker.formats.photo.reencode import PILLOW_DECODES     # here: a movie's verify needs no Pillow

    return bool(recall(PILLOW_DECODES, path))


def _declared_kind(rebuilt: Rebuilt) -> str | None:
    try:
        return formats.by_name(rebuilt.format).kind
    except KeyError:
        return None


def _copied_losslessly(source: Path, rebuilt: Rebuilt, source_format: str | None = None) -> bool:
    """Whether the copy is the input's own coded image data: same format, a lossless family, no salvage."""
    if rebuilt.salvage_reason is not None or rebuilt.format not in IMAGE_PROOFS:
        return False
    if source_format is not None:
        return source_format == rebuilt.format
    try:
        return formats.identify(source).name == rebuilt.format
    except SanitizeError:
        return False
