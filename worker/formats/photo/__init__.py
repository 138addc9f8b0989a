"""Photo families: JPEG, PNG/APNG, WebP, GIF (lossless rebuilds by allow-list) and HEIF/AVIF, TIFF
(re-encoded to JPEG by ``reencode``)."""
