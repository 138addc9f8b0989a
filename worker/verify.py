"""Verify an agency copy with readers other than the one that wrote it. Fail closed.

Three independent looks: identify the copy by content again (it must be the format the rebuild
declared), the format's own structure walk (``Format.inspect``) against its allow-list, and for
photos a Pillow re-read that must decode and show no EXIF beyond Orientation, no XMP, no text.
Audio and video modules do their ffprobe and mutagen checks inside their ``inspect``.
"""
from __future__ import annotations

from pathlib import Path

from worker import formats
from worker.errors import SanitizeError, verify_failed
from worker.formats.base import Rebuilt

# Pillow `info` keys that are pure rendering data; anything else in `info` is a finding.
PILLOW_TECHNICAL_INFO = frozenset({
    "icc_profile", "dpi", "jfif", "jfif_version", "jfif_unit", "jfif_density", "adobe", "adobe_transform",
    "progressive", "progression", "interlace", "gamma", "srgb", "chromaticity", "transparency", "background",
    "duration", "loop", "version", "extension", "aspect", "bbox", "blend", "disposal", "default_image",
    "compression", "resolution", "mode", "palette", "optimize", "quality", "subsampling", "tile",
    "sbit", "frame_count", "timestamp", "minimum_frame_duration", "num_plays", "use_dib",
})
ORIENTATION_TAG = 0x0112


def pillow_findings(path: Path) -> list[str]:
    """Decode the copy with Pillow and list whatever metadata it still exposes."""
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
                # "exif" is judged by its content below (an Orientation-only EXIF may stay), not by presence
                extra = sorted(k for k in im.info if str(k).lower() not in PILLOW_TECHNICAL_INFO | {"exif"})
                findings += [f"Pillow info key {k!r} in frame {index}" for k in extra]
            exif = im.getexif()
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
    except SanitizeError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means the copy is not publishable
        findings.append(f"Pillow cannot decode the copy: {type(e).__name__}: {e}")
    return findings


def verify_copy(path: Path, rebuilt: Rebuilt) -> None:
    """Raise SanitizeError(verify_failed) unless the copy at ``path`` is clean and decodes."""
    try:
        fmt = formats.identify(path)
    except SanitizeError as e:
        raise verify_failed(f"the copy is not recognisable: {e.message}") from None
    if fmt.name != rebuilt.format:
        raise verify_failed(f"the copy reads as {fmt.name}, the rebuild declared {rebuilt.format}")
    findings = list(fmt.inspect(path))
    if fmt.kind == "photo":
        findings += pillow_findings(path)
    if findings:
        raise verify_failed("the copy still holds: " + "; ".join(findings[:10]))
