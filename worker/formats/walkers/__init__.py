"""Bounded structure walkers shared by several families: ISO-BMFF boxes (``boxes``: MP4, MOV, M4A,
3GP, HEIF) and RIFF/IFF chunks (``iff``: WAV, AIFF, WebP)."""
