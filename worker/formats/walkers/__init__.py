"""Bounded structure walkers shared by several families: ISO-BMFF boxes (``boxes``: MP4, MOV, M4A,
3GP, HEIF), RIFF/IFF chunks (``iff``: WAV, AIFF, WebP) and TIFF IFDs (``tiff_ifd``: EXIF wherever
it lives, read by ``worker.exif``)."""
