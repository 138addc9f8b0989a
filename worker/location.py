"""GPS fixes and capture times: one normalised shape, whatever container they came from.

Every reader in ``worker/formats`` turns what it finds into ``Candidate`` values (raw numbers plus
where they came from); ``normalise`` applies DESIGN.md's rules (WGS84 decimal degrees, ranges,
0,0 is no fix) and ``choose`` picks by source preference: EXIF GPS, then XMP, then container boxes.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

# lower rank wins
SOURCE_RANK = {"exif": 0, "xmp": 1, "quicktime": 2, "mdta": 2, "3gpp": 2, "container": 3}
# GoPro's GPMF telemetry track: a recorded fix, ranked after the container's own location boxes
SOURCE_RANK["gpmf"] = 3


# Fix and Found are NamedTuples, not dataclasses: immutable values all the same, without the
# import of dataclasses (and inspect) that was a twentieth of a one-file run's start (#10)
class Fix(NamedTuple):
    """One usable GPS fix: decimal degrees, and where it was read."""

    lat: float
    lon: float
    alt: float | None = None          # metres above sea level (negative below)
    accuracy: float | None = None     # horizontal, metres
    source: str = ""                  # e.g. "exif", "xmp", "quicktime", "mdta", "3gpp"

    def as_dict(self) -> dict:
        return {"lat": self.lat, "lon": self.lon, "alt": self.alt, "accuracy": self.accuracy, "source": self.source}


class Found(NamedTuple):
    """What one container holds: the chosen fix (or None), capture time, and why candidates were dropped."""

    fix: Fix | None = None
    captured_at: str | None = None    # ISO 8601, with offset when the file says it
    notes: tuple[str, ...] = ()

    def merged_with(self, other: "Found") -> "Found":
        """Combine two readings of the same file, keeping the better-ranked fix."""
        fix = self.fix
        if other.fix and (fix is None or _rank(other.fix) < _rank(fix)):
            fix = other.fix
        return Found(fix=fix, captured_at=self.captured_at or other.captured_at, notes=self.notes + other.notes)


def _rank(fix: Fix) -> int:
    return SOURCE_RANK.get(fix.source.split(":")[0], 9)


class NoFix(ValueError):
    """A candidate that is not a usable fix; the message is recorded as a note."""


def normalise(lat: float | None, lon: float | None, *, alt: float | None = None,
              accuracy: float | None = None, source: str) -> Fix:
    """Validate one candidate. Raises NoFix with the reason when it is not a usable fix."""
    if lat is None or lon is None:
        raise NoFix(f"{source}: latitude or longitude missing")
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError, OverflowError):
        raise NoFix(f"{source}: latitude or longitude not a number") from None
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise NoFix(f"{source}: latitude or longitude not finite")
    if abs(lat) > 90 or abs(lon) > 180:
        raise NoFix(f"{source}: out of range ({lat}, {lon})")
    # judged as stored: 1e-97 rounds to 0, and 0,0 is no fix whatever noise a writer adds below 1e-9
    lat, lon = round(lat, 9), round(lon, 9)
    if lat == 0 and lon == 0:
        raise NoFix(f"{source}: 0,0 is no fix")
    if alt is not None:
        try:
            alt = float(alt)
        except (TypeError, ValueError, OverflowError):
            alt = None
        if alt is not None and (not math.isfinite(alt) or abs(alt) > 100_000):
            alt = None
    if accuracy is not None:
        try:
            accuracy = float(accuracy)
        except (TypeError, ValueError, OverflowError):
            accuracy = None
        if accuracy is not None and (not math.isfinite(accuracy) or accuracy < 0):
            accuracy = None
    return Fix(lat=lat, lon=lon, alt=alt, accuracy=accuracy, source=source)


def found_from(lat, lon, *, alt=None, accuracy=None, source: str, captured_at: str | None = None) -> Found:
    """Normalise one candidate into a Found, recording the reason when it is not a fix."""
    try:
        return Found(fix=normalise(lat, lon, alt=alt, accuracy=accuracy, source=source), captured_at=captured_at)
    except NoFix as e:
        return Found(fix=None, captured_at=captured_at, notes=(str(e),))


def choose(readings: list[Found]) -> Found:
    result = Found()
    for r in readings:
        result = result.merged_with(r)
    return result


# ISO 6709 as phones write it: "+40.7128-074.0060+010.000/", also "+404243.2-0740017.5/" (DMS) and
# "+4042.72-07400.29/" (degrees and minutes). The sign is mandatory, the altitude optional.
# pattern text, compiled (and cached) by re on first use rather than at import (#10, start time)
_ISO6709 = r"^\s*([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)?(?:CRS[^/]*)?/?\s*$"


def _iso6709_angle(text: str, degree_digits: int) -> float:
    sign = -1.0 if text[0] == "-" else 1.0
    body = text[1:]
    whole, _, frac = body.partition(".")
    frac = "." + frac if frac else ""
    extra = len(whole) - degree_digits
    if extra <= 0:
        value = float(whole + frac)
    elif extra == 2:   # DDMM.MMM
        value = int(whole[:degree_digits]) + float(whole[degree_digits:] + frac) / 60
    elif extra == 4:   # DDMMSS.SSS
        value = (int(whole[:degree_digits]) + int(whole[degree_digits:degree_digits + 2]) / 60
                 + float(whole[degree_digits + 2:] + frac) / 3600)
    else:
        raise NoFix(f"ISO 6709: cannot read angle {text!r}")
    return sign * value


def parse_iso6709(text: str) -> tuple[float, float, float | None]:
    """Return (lat, lon, alt) from an ISO 6709 string; raises NoFix when it is not one."""
    m = re.match(_ISO6709, text or "")
    if not m:
        raise NoFix(f"ISO 6709: not a location string {text!r}")
    lat = _iso6709_angle(m.group(1), 2)
    lon = _iso6709_angle(m.group(2), 3)
    alt = float(m.group(3)) if m.group(3) else None
    return lat, lon, alt


def dms_to_degrees(degrees: float, minutes: float, seconds: float, ref: str | None) -> float:
    value = float(degrees) + float(minutes) / 60 + float(seconds) / 3600
    return -value if (ref or "").strip().upper()[:1] in ("S", "W") else value
