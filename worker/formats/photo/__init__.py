"""Photo families: JPEG, PNG/APNG, WebP, GIF (lossless rebuilds by allow-list) and HEIF/AVIF, TIFF
(re-encoded to JPEG by ``reencode``)."""


def animation_pixel_budget(limits) -> int:
    """Frames x canvas pixels an animation may declare: what a viewer would have to composite.

    Each frame is checked against ``max_pixels`` already; this bounds their product, so 1999 frames
    on a 119-megapixel canvas are refused from the headers instead of costing minutes.
    """
    return 16 * limits.max_pixels
