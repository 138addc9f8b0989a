"""worker/icc.py: a kept ICC profile keeps its colours and loses its text."""
from __future__ import annotations

import io
import struct

import pytest
from PIL import ImageCms

from fixtures.hostile import CANARY
from fixtures.hostile_photo import planted_icc
from fixtures.icc import srgb_icc
from worker import icc


def test_text_laden_profile_is_rebuilt_without_any_text():
    planted = planted_icc()
    assert CANARY in planted and icc.findings(planted)
    rebuilt = icc.rebuild(planted)
    assert CANARY not in rebuilt
    assert icc.findings(rebuilt) == []
    profile = ImageCms.ImageCmsProfile(io.BytesIO(rebuilt))
    assert ImageCms.getProfileDescription(profile).strip() == icc.NEUTRAL_DESCRIPTION
    assert ImageCms.getProfileCopyright(profile).strip() == ""


@pytest.mark.parametrize("profile", [srgb_icc(), planted_icc(),
                                     ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()])
def test_rebuilt_profile_transforms_like_the_original(profile):
    rebuilt = icc.rebuild(profile)
    assert icc.check_fidelity(profile, rebuilt, tolerance=0)


def test_a_profile_whose_colour_tags_change_fails_the_fidelity_check():
    profile = bytearray(srgb_icc())
    count = struct.unpack(">I", profile[128:132])[0]
    for i in range(count):
        sig, offset, _size = struct.unpack_from(">4sII", profile, 132 + 12 * i)
        if sig == b"rXYZ":
            profile[offset + 8:offset + 12] = struct.pack(">i", 1 << 15)   # a different red primary
    assert not icc.check_fidelity(srgb_icc(), icc.rebuild(bytes(profile)))


def test_shared_tag_data_stays_shared_and_unreadable_profiles_are_dropped():
    rebuilt = icc.rebuild(srgb_icc())
    entries = [struct.unpack_from(">4sII", rebuilt, 132 + 12 * i) for i in range(struct.unpack(">I", rebuilt[128:132])[0])]
    offsets = {sig: offset for sig, offset, _ in entries}
    assert offsets[b"rTRC"] == offsets[b"gTRC"] == offsets[b"bTRC"]
    assert icc.clean(b"not a profile at all" * 10) is None
    with pytest.raises(icc.ProfileError):
        icc.rebuild(srgb_icc()[:200])
