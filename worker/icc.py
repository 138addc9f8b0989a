"""The one ICC profile cleaner: a kept profile keeps its colour, never its text.

An ICC profile is needed to show a photo's colours as taken, and every photo family keeps it
(JPEG APP2, PNG iCCP, WebP ICCP, GIF ICCRGBG1012, the JPEG re-encodes of TIFF/HEIC/AVIF and of
salvaged photos). But a profile is also a container: ``desc``, ``cprt``, ``dmnd``/``dmdd``
(device maker and model), vendor tags, the header's creator/device/date/ID fields and the slack
between tags can hold any text. So a profile is never copied; ``rebuild`` writes a new one:

- header: size, version, class, colour space, PCS, rendering intent and illuminant kept; CMM,
  date, platform, flags, device maker/model/attributes, creator, profile ID and reserved zeroed;
- tags: only those in ``COLOUR_TAGS``, each only with a type its colour role allows and only its
  own bytes (no padding or slack); tags that share data keep sharing it;
- ``desc``: a neutral "ICC profile" (``desc`` type for v2, ``mluc`` for v4); no ``cprt``.

``check_fidelity`` proves the rebuilt profile transforms colours as the original does (LittleCMS,
through PIL.ImageCms, on a few colours of the profile's own space). ``findings`` is the
verifier's independent check of a copy's profile.
"""
from __future__ import annotations

import functools
import io
import struct

HEADER = 128
TAG_ENTRY = 12
MAX_TAGS = 100                      # real profiles have 10-30; a budget, set before the walk
MAX_PROFILE_BYTES = 4 * 1024 * 1024  # a JPEG's APP2 chunks can add up to ~16 MB; no colour profile needs that
NEUTRAL_DESCRIPTION = "ICC profile"

# tag signature -> the tag types that may carry it (ICC.1:2010 and ICC.1:2001-04)
_LUT_TYPES = frozenset({b"mft1", b"mft2", b"mAB ", b"mBA ", b"mpet"})
COLOUR_TAGS: dict[bytes, frozenset[bytes]] = {
    **{t: frozenset({b"XYZ "}) for t in (b"rXYZ", b"gXYZ", b"bXYZ", b"wtpt", b"bkpt", b"lumi")},
    **{t: frozenset({b"curv", b"para"}) for t in (b"rTRC", b"gTRC", b"bTRC", b"kTRC")},
    b"chad": frozenset({b"sf32"}),
    b"chrm": frozenset({b"chrm"}),
    b"cicp": frozenset({b"cicp"}),
    **{t: _LUT_TYPES for t in (b"A2B0", b"A2B1", b"A2B2", b"B2A0", b"B2A1", b"B2A2", b"gamt",
                               b"pre0", b"pre1", b"pre2")},
    **{t: frozenset({b"mpet"}) for t in (b"D2B0", b"D2B1", b"D2B2", b"D2B3", b"B2D0", b"B2D1", b"B2D2", b"B2D3")},
}
# header bytes kept as they are: version, class, colour space, PCS, rendering intent, illuminant
_KEPT_HEADER = ((8, 24), (36, 40), (64, 80))
_PARA_PARAMETERS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}


class ProfileError(ValueError):
    """The profile cannot be read as ICC; callers decide whether that is corrupt or dropped."""


def _tag_table(profile: bytes) -> list[tuple[bytes, int, int]]:
    if len(profile) < HEADER + 4 or profile[36:40] != b"acsp":
        raise ProfileError("no ICC header ('acsp' signature missing)")
    (declared,) = struct.unpack(">I", profile[:4])
    if declared > len(profile) or declared < HEADER + 4:
        raise ProfileError(f"the profile declares {declared} bytes, {len(profile)} are present")
    (count,) = struct.unpack(">I", profile[HEADER:HEADER + 4])
    if count > MAX_TAGS:
        raise ProfileError(f"{count} tags is over the limit of {MAX_TAGS}")
    if HEADER + 4 + count * TAG_ENTRY > declared:
        raise ProfileError("the tag table runs past the profile")
    tags = []
    for i in range(count):
        signature, offset, size = struct.unpack_from(">4sII", profile, HEADER + 4 + i * TAG_ENTRY)
        if size < 8 or offset < HEADER or offset + size > declared:
            raise ProfileError(f"tag {signature!r} runs outside the profile")
        tags.append((signature, offset, size))
    return tags


def _own_bytes(tag_type: bytes, data: bytes) -> bytes | None:
    """A tag's data cut to what its type defines (no slack), or None when it is inconsistent."""
    if tag_type == b"XYZ ":
        n = (len(data) - 8) // 12
        return data[:8 + 12 * n] if n else None
    if tag_type == b"curv":
        if len(data) < 12:
            return None
        (n,) = struct.unpack(">I", data[8:12])
        return data[:12 + 2 * n] if 12 + 2 * n <= len(data) else None
    if tag_type == b"para":
        if len(data) < 12:
            return None
        function = struct.unpack(">H", data[8:10])[0]
        if function not in _PARA_PARAMETERS:
            return None
        size = 12 + 4 * _PARA_PARAMETERS[function]
        return data[:size] if size <= len(data) else None
    if tag_type == b"sf32":
        return data[:44] if len(data) >= 44 else None
    if tag_type == b"chrm":
        if len(data) < 12:
            return None
        (channels,) = struct.unpack(">H", data[8:10])
        size = 12 + 8 * channels
        return data[:size] if size <= len(data) else None
    if tag_type == b"cicp":
        return data[:12] if len(data) >= 12 else None
    return data   # LUT types: their tables are colour, kept whole as the tag table sizes them


def neutral_description(version_major: int) -> bytes:
    if version_major >= 4:
        text = NEUTRAL_DESCRIPTION.encode("utf-16-be")
        return b"mluc" + bytes(4) + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(text), 28) + text
    ascii_text = NEUTRAL_DESCRIPTION.encode("ascii") + b"\x00"
    # textDescriptionType: ASCII, then empty Unicode and ScriptCode parts (67 bytes of zeros)
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(4 + 4 + 2 + 1 + 67)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def rebuild(profile: bytes) -> bytes:
    """A new profile holding only the colour-defining parts of ``profile``; ProfileError when unreadable."""
    if len(profile) > MAX_PROFILE_BYTES:
        raise ProfileError(f"a {len(profile)}-byte profile is over the limit of {MAX_PROFILE_BYTES}")
    tags = _tag_table(profile)
    kept: list[tuple[bytes, bytes]] = []
    for signature, offset, size in tags:
        types = COLOUR_TAGS.get(signature)
        if types is None:
            continue
        data = profile[offset:offset + size]
        if data[:4] not in types:
            continue
        own = _own_bytes(data[:4], data[:4] + bytes(4) + data[8:])   # the type's reserved bytes zeroed
        if own is not None:
            kept.append((signature, own))
    if not kept:
        raise ProfileError("the profile holds no colour-defining tag")
    kept.append((b"desc", neutral_description(profile[8])))
    header = bytearray(HEADER)
    for start, end in _KEPT_HEADER:
        header[start:end] = profile[start:end]
    table_end = HEADER + 4 + TAG_ENTRY * len(kept)
    entries, blobs, where = [], [], {}
    offset = table_end
    for signature, data in kept:
        if data not in where:   # shared data stays shared (rTRC/gTRC/bTRC often are one curve)
            where[data] = offset
            blobs.append(_pad4(data))
            offset += len(blobs[-1])
        entries.append(struct.pack(">4sII", signature, where[data], len(data)))
    body = struct.pack(">I", len(kept)) + b"".join(entries) + b"".join(blobs)
    header[0:4] = struct.pack(">I", HEADER + len(body))
    return bytes(header) + body


def _test_colours(space: bytes):
    from PIL import Image

    if space == b"GRAY":
        return Image.frombytes("L", (5, 1), bytes((0, 40, 128, 200, 255)))
    if space == b"CMYK":
        values = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255), (60, 120, 30, 10)]
        return Image.frombytes("CMYK", (len(values), 1), bytes(v for c in values for v in c))
    values = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 120, 40), (30, 90, 160),
              (128, 128, 128)]
    return Image.frombytes("RGB", (len(values), 1), bytes(v for c in values for v in c))


def check_fidelity(original: bytes, rebuilt: bytes, tolerance: int = 1) -> bool:
    """Whether ``rebuilt`` maps a few colours to sRGB as ``original`` does (each channel within ``tolerance``).

    True as well when LittleCMS cannot use the original at all: no reader applies it then, so
    there is no colour to lose.
    """
    from PIL import ImageChops, ImageCms

    space = original[16:20]
    if space not in (b"RGB ", b"GRAY", b"CMYK"):
        return True
    sample = _test_colours(space)
    srgb = ImageCms.createProfile("sRGB")

    def through(profile: bytes):
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        # NOOPTIMIZE: LittleCMS then maps each colour through the profiles' own tags rather than
        # first precalculating a lookup table, which for a few colours is both exact and a quarter
        # of the time (~2 ms a profile, not ~10, once per profile in each process of a batch, #10)
        return ImageCms.profileToProfile(sample, source, srgb, outputMode="RGB", flags=ImageCms.Flags.NOOPTIMIZE)

    try:
        expected = through(original)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return True
    try:
        got = through(rebuilt)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return False
    return max(high for _low, high in ImageChops.difference(expected, got).getextrema()) <= tolerance


@functools.lru_cache(maxsize=32)   # a batch of one phone's photos carries one profile: check it once
def clean(profile: bytes) -> bytes | None:
    """The profile to write into a copy: rebuilt, its fidelity checked; None when it cannot be kept.

    None when the profile is unreadable or when its rebuilt form would show other colours (it
    needs a tag we do not keep): the copy then goes without a profile, as every reader shows a
    photo whose profile it cannot use, and the report says so. The photo is never refused for it.
    """
    try:
        rebuilt = rebuild(profile)
    except ProfileError:
        return None
    return rebuilt if check_fidelity(profile, rebuilt) else None


def findings(profile: bytes) -> list[str]:
    """The verifier's check of a copy's profile: only colour tags, a neutral description, zeroed header fields."""
    try:
        tags = _tag_table(profile)
    except ProfileError as e:
        return [f"ICC profile unreadable: {e}"]
    found = []
    header_text = {"CMM": (4, 8), "date": (24, 36), "platform": (40, 44), "flags": (44, 48), "device maker": (48, 52),
                   "device model": (52, 56), "attributes": (56, 64), "creator": (80, 84), "profile ID": (84, 100),
                   "reserved": (100, 128)}
    found += [f"ICC header {name} not zeroed" for name, (a, b) in header_text.items() if profile[a:b].strip(b"\x00")]
    for signature, offset, size in tags:
        data = profile[offset:offset + size]
        if signature == b"desc":
            if data not in (neutral_description(4), neutral_description(2)):
                found.append("ICC desc is not the neutral description")
        elif signature not in COLOUR_TAGS:
            found.append(f"ICC tag {signature.decode('latin-1', 'replace')!r} is not colour-defining")
        elif data[:4] not in COLOUR_TAGS[signature]:
            found.append(f"ICC tag {signature.decode('latin-1')} has type {data[:4]!r}")
    gaps, pos = [], HEADER + 4 + TAG_ENTRY * len(tags)
    for _signature, offset, size in sorted(tags, key=lambda t: t[1]):
        gaps.append(profile[pos:offset])
        pos = max(pos, offset + size)
    gaps.append(profile[pos:])
    if b"".join(gaps).strip(b"\x00"):
        found.append("non-zero bytes outside the ICC tags")
    return found


__all__ = ["rebuild", "clean", "check_fidelity", "findings", "ProfileError", "NEUTRAL_DESCRIPTION"]
