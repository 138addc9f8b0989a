"""The ``ftyp`` brands of the ISO-BMFF family: which say video or audio (ours), which say a still image.

Shared by identification (``isobmff``), the in-place fallback (``av_rebuild``, which reduces an
``ftyp`` to known brands) and the verifier (``av_inspect``, which accepts no other brand).
"""
from __future__ import annotations

# brands of still images (the heif module's) and other non-AV ISO-BMFF files: never ours
IMAGE_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1",
                          b"mif2", b"msf1", b"avif", b"avis", b"avio", b"jpeg", b"jpgs", b"crx ", b"jp2 ",
                          b"jpx ", b"jpm ", b"mjp2", b"mj2s", b"heif", b"miaf", b"vvic", b"MiHE"})
QUICKTIME_BRANDS = frozenset({b"qt  "})
AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
MP4_BRANDS = frozenset({b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9",
                        b"mp41", b"mp42", b"mp71", b"avc1", b"M4V ", b"M4VH", b"M4VP", b"MSNV", b"dash",
                        b"f4v ", b"f4p ", b"mmp4", b"mp4v", b"XAVC", b"NDAS", b"ndas", b"caqv", b"CAEP"}) | AUDIO_BRANDS
THREE_GPP2_BRANDS = frozenset({b"kddi", b"KDDI"})     # KDDI's 3GPP2 phones
# compatible brands ffmpeg and cameras write beside the ones above (codec and profile brands)
COMPATIBLE_ONLY = frozenset({b"av01", b"cmfc", b"cmf2", b"msdh", b"msix", b"dby1", b"hvc1", b"hev1", b"opus", b"mp21"})
THREE_GPP_PREFIXES = (b"3gp", b"3ge", b"3gs", b"3gr", b"3gt", b"3gh", b"3gm")
BRAND_TAIL = b"0123456789abcdefghijklmnopqrstuvwxyz"   # 3GPP brands are a prefix and a release: 3gp5, 3g2a


def known_av_brand(brand: bytes) -> bool:
    """A brand of a video/audio ISO-BMFF file that we know, by name (never free text)."""
    if brand in MP4_BRANDS or brand in QUICKTIME_BRANDS or brand in THREE_GPP2_BRANDS or brand in COMPATIBLE_ONLY:
        return True
    return (brand.startswith(THREE_GPP_PREFIXES + (b"3g2",)) and len(brand) == 4
            and brand[3:4] in [bytes([c]) for c in BRAND_TAIL])
