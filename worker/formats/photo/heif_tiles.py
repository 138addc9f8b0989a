"""A HEIC's primary image in bands of upright rows, decoded one coded tile at a time.

libheif's whole-image decode holds the coded data, the full 4:2:0 picture and its RGB conversion
at once: twice the RGB picture at 12 MP, before Pillow's own copy. A phone's HEIC is a grid of
HEVC tiles (512 x 512 on iPhones) that each decode on their own, so a band of output rows costs
only the tiles under it: ``Bands`` places them, turned and mirrored as the item's ``irot`` and
``imir`` say (in the order the item lists them), and keeps a tile only while the next band still
needs it. Two threads decode the next band's tiles meanwhile, each with its own libheif context.
With libheif's own transformations off, the geometry is ours and exact: the bands together are
pixel for pixel libheif's full decode (tests/test_heif_tiles.py).

pillow-heif does not expose libheif's tile API, so ``open_tiles`` binds the libheif it ships
(ctypes). It answers None wherever that does not hold (no such library or symbol, a clean
aperture ``clap``, a tiling out of bounds) and the caller decodes the whole image as before.
"""
from __future__ import annotations

import ctypes
import glob
import itertools
import os
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

from PIL import Image

Transpose = Image.Transpose
Box = tuple[int, int, int, int]

# libheif's enums (heif_image.h), fixed by its C API
COLORSPACE_RGB = 1
CHROMA_INTERLEAVED_RGB = 10
CHANNEL_INTERLEAVED = 10
MIRROR_VERTICAL = 0                      # heif_transform_mirror_direction_vertical: top and bottom swap
IROT, IMIR = int.from_bytes(b"irot", "big"), int.from_bytes(b"imir", "big")
MAX_TRANSFORMS = 16
# Threads (each with its own libheif context) decoding tiles ahead of the bands: two keep two
# cores busy decoding while the bands are encoded and checked between them.
DECODER_THREADS = 2
# A grid of more tiles than this is decoded whole: a band loop over millions of 1-pixel tiles
# would be the slow path a hostile file asks for.
MAX_TILES = 4096

# irot's counter-clockwise angle -> the Pillow transpose that applies it
ROTATIONS = {90: Transpose.ROTATE_90, 180: Transpose.ROTATE_180, 270: Transpose.ROTATE_270}
INVERSE = {Transpose.ROTATE_90: Transpose.ROTATE_270, Transpose.ROTATE_270: Transpose.ROTATE_90}


class TileError(Exception):
    """libheif refused a tile: its message, for ``heif.decoder_error`` to classify."""


# --- geometry: pure -------------------------------------------------------------------------------

def turned_size(op: Transpose, size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    return (height, width) if op in (Transpose.ROTATE_90, Transpose.ROTATE_270,
                                     Transpose.TRANSPOSE, Transpose.TRANSVERSE) else (width, height)


def turned_box(op: Transpose, size: tuple[int, int], box: Box) -> Box:
    """Where ``box`` of an image of ``size`` lands once ``op`` is applied (Pillow's transpose)."""
    width, height = size
    x0, y0, x1, y1 = box
    if op == Transpose.FLIP_LEFT_RIGHT:
        return width - x1, y0, width - x0, y1
    if op == Transpose.FLIP_TOP_BOTTOM:
        return x0, height - y1, x1, height - y0
    if op == Transpose.ROTATE_180:
        return width - x1, height - y1, width - x0, height - y0
    if op == Transpose.ROTATE_90:      # counter-clockwise: (x, y) -> (y, width - 1 - x)
        return y0, width - x1, y1, width - x0
    if op == Transpose.ROTATE_270:     # clockwise: (x, y) -> (height - 1 - y, x)
        return height - y1, x0, height - y0, x1
    raise ValueError(f"no placement for {op!r}")


class Placement(NamedTuple):
    """The coded picture's size and the transposes, in order, that make it upright."""

    coded: tuple[int, int]
    ops: tuple[Transpose, ...]

    def sizes(self) -> list[tuple[int, int]]:
        sizes = [self.coded]
        for op in self.ops:
            sizes.append(turned_size(op, sizes[-1]))
        return sizes

    @property
    def size(self) -> tuple[int, int]:
        return self.sizes()[-1]

    def to_coded(self, box: Box) -> Box:
        """The coded pixels that ``box`` of the upright picture shows."""
        sizes = self.sizes()
        for op, size in zip(reversed(self.ops), reversed(sizes[1:])):
            box = turned_box(INVERSE.get(op, op), size, box)
        return box

    def to_upright(self, box: Box) -> Box:
        for op, size in zip(self.ops, self.sizes()):
            box = turned_box(op, size, box)
        return box


def intersect(a: Box, b: Box) -> Box | None:
    box = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return box if box[0] < box[2] and box[1] < box[3] else None


def on_grid(value: int, up: bool) -> int:
    """``value`` rounded to the JPEG's 8 x 8 block grid."""
    return -(-value // 8) * 8 if up else value // 8 * 8


class Bands:
    """Rows of the upright picture from ``tile(column, row)``, the coded grid's tiles as RGB images.

    Each tile is decoded once: it is kept from the first band that needs it until a band no
    longer does, so what is held is a band's tiles, those of the next being decoded ahead (on
    ``decoder``'s threads, when given) and the few the quality samples took early.
    """

    def __init__(self, placement: Placement, tile_size: tuple[int, int],
                 tile: Callable[[int, int], Image.Image], decoder: Executor | None = None) -> None:
        self.placement, self.tile_size, self._tile, self._decoder = placement, tile_size, tile, decoder
        self._kept: dict[tuple[int, int], Image.Image] = {}    # tiles of the current band
        self._spare: dict[tuple[int, int], Image.Image] = {}   # decoded for samples, awaiting their band
        self._ahead: dict[tuple[int, int], Future] = {}        # being decoded for the next band

    @property
    def size(self) -> tuple[int, int]:
        return self.placement.size

    def _tiles_under(self, coded: Box) -> list[tuple[int, int]]:
        tile_w, tile_h = self.tile_size
        return [(column, row) for row in range(coded[1] // tile_h, (coded[3] - 1) // tile_h + 1)
                for column in range(coded[0] // tile_w, (coded[2] - 1) // tile_w + 1)]

    def _coded_tile_box(self, column: int, row: int) -> Box:
        tile_w, tile_h = self.tile_size
        return column * tile_w, row * tile_h, (column + 1) * tile_w, (row + 1) * tile_h

    def _get(self, key: tuple[int, int], into: dict[tuple[int, int], Image.Image]) -> Image.Image:
        """Tile ``key``: held already, being decoded ahead, or decoded now; a new one is held in ``into``."""
        for held in (self._kept, self._spare):
            if key in held:
                tile = held[key]
                if held is self._spare and into is self._kept:   # a sample's tile: its band has come
                    self._kept[key] = self._spare.pop(key)
                return tile
        ahead = self._ahead.pop(key, None)
        into[key] = ahead.result() if ahead is not None else self._decode(key)
        return into[key]

    def _decode(self, key: tuple[int, int]) -> Image.Image:
        # with decoder threads, every decode is theirs: each has a libheif context of its own
        return self._tile(*key) if self._decoder is None else self._decoder.submit(self._tile, *key).result()

    def _queue(self, coded: Box) -> None:
        """Start decoding the tiles under ``coded`` that are not here yet, on the decoder threads."""
        if self._decoder is None:
            return
        for key in self._tiles_under(coded):
            if key not in self._kept and key not in self._spare and key not in self._ahead:
                self._ahead[key] = self._decoder.submit(self._tile, *key)

    def _decode_ahead(self, top: int, end: int) -> None:
        """Start decoding the tiles upright rows ``top:end`` need: the decoder threads work on
        them while this one encodes and checks the bands before."""
        width, height = self.size
        if top < height:
            self._queue(self.placement.to_coded((0, top, width, min(end, height))))

    def _assemble(self, box: Box, into: dict[tuple[int, int], Image.Image]) -> Image.Image:
        """``box`` of the upright picture, from the tiles under it (decoded into ``into`` when new)."""
        coded = self.placement.to_coded(box)
        region = Image.new("RGB", (box[2] - box[0], box[3] - box[1]))
        for column, row in self._tiles_under(coded):
            tile_box = self._coded_tile_box(column, row)
            part = intersect(tile_box, coded)
            if part is None:
                continue
            tile = self._get((column, row), into)
            local = (part[0] - tile_box[0], part[1] - tile_box[1], part[2] - tile_box[0], part[3] - tile_box[1])
            if local[2] > tile.width or local[3] > tile.height:
                raise TileError(f"tile ({column}, {row}) is {tile.width}x{tile.height}, "
                                f"smaller than the grid's {self.tile_size[0]}x{self.tile_size[1]}")
            piece = tile.crop(local)
            for op in self.placement.ops:
                piece = piece.transpose(op)
            x0, y0, _, _ = self.placement.to_upright(part)
            region.paste(piece, (x0 - box[0], y0 - box[1]))
        return region

    def band(self, top: int, end: int) -> Image.Image:
        """Upright rows ``top:end`` as an RGB image."""
        width, _ = self.size
        box = (0, top, width, end)
        wanted = set(self._tiles_under(self.placement.to_coded(box)))
        for key in [k for k in self._kept if k not in wanted]:
            del self._kept[key]
        self._decode_ahead(top, end)   # all of this band's new tiles queued: placed as each is done
        band = self._assemble(box, self._kept)
        self._decode_ahead(end, end + (end - top))
        return band

    def samples(self, block: int = 128) -> list[Image.Image]:
        """Blocks of the upright picture to estimate a JPEG quality from, before the first band:
        up to four ``block`` x ``block`` blocks on the 8 x 8 grid inside each of the tiles at a
        quarter and three quarters of each side of the grid. Those tiles stay for the band that
        needs them, so a sample costs no second decode."""
        (coded_w, coded_h), (tile_w, tile_h) = self.placement.coded, self.tile_size
        columns, rows = -(-coded_w // tile_w), -(-coded_h // tile_h)
        boxes = []
        for row in sorted({rows // 4, 3 * rows // 4}):
            for column in sorted({columns // 4, 3 * columns // 4}):
                part = intersect(self._coded_tile_box(column, row), (0, 0, coded_w, coded_h))
                if part is None:
                    continue
                self._queue(part)
                x0, y0, x1, y1 = self.placement.to_upright(part)
                for left in sorted({on_grid(x0, True), on_grid(x1 - block, False)}):
                    for top in sorted({on_grid(y0, True), on_grid(y1 - block, False)}):
                        if x0 <= left and left + block <= x1 and y0 <= top and top + block <= y1:
                            boxes.append((left, top, left + block, top + block))
        return [self._assemble(box, self._spare) for box in boxes]


# --- libheif, through ctypes ----------------------------------------------------------------------

class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("subcode", ctypes.c_int), ("message", ctypes.c_char_p)]


class _Tiling(ctypes.Structure):     # struct heif_image_tiling, version 1
    _fields_ = [("version", ctypes.c_int), ("num_columns", ctypes.c_uint32), ("num_rows", ctypes.c_uint32),
                ("tile_width", ctypes.c_uint32), ("tile_height", ctypes.c_uint32),
                ("image_width", ctypes.c_uint32), ("image_height", ctypes.c_uint32),
                ("top_offset", ctypes.c_uint32), ("left_offset", ctypes.c_uint32),
                ("number_of_extra_dimensions", ctypes.c_uint8), ("extra_dimension_size", ctypes.c_uint32 * 8)]


_LIBRARY: list[ctypes.CDLL | None] = []


def _library_path() -> str | None:
    """The libheif pillow-heif runs on: its wheel's bundled copy, else the system's."""
    try:
        import pillow_heif
    except ImportError:
        return None
    wheel_libs = os.path.join(os.path.dirname(pillow_heif.__path__[0]), "pillow_heif.libs")
    bundled = sorted(glob.glob(os.path.join(wheel_libs, "libheif*.so*")))
    if bundled:
        return bundled[0]
    import ctypes.util
    return ctypes.util.find_library("heif")


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Argument and result types of the calls used here; AttributeError when one is missing."""
    vp, u32, c_int = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    signatures = {
        "heif_context_alloc": (vp, []),
        "heif_context_free": (None, [vp]),
        "heif_context_read_from_file": (_Error, [vp, ctypes.c_char_p, vp]),
        "heif_context_get_primary_image_handle": (_Error, [vp, ctypes.POINTER(vp)]),
        "heif_image_handle_release": (None, [vp]),
        "heif_image_handle_get_item_id": (u32, [vp]),
        "heif_image_handle_get_image_tiling": (_Error, [vp, c_int, ctypes.POINTER(_Tiling)]),
        "heif_image_handle_decode_image_tile": (_Error, [vp, ctypes.POINTER(vp), c_int, c_int, vp, u32, u32]),
        "heif_item_get_transformation_properties": (c_int, [vp, u32, ctypes.POINTER(u32), c_int]),
        "heif_item_get_property_type": (u32, [vp, u32, u32]),
        "heif_item_get_property_transform_rotation_ccw": (c_int, [vp, u32, u32]),
        "heif_item_get_property_transform_mirror": (c_int, [vp, u32, u32]),
        "heif_decoding_options_alloc": (vp, []),
        "heif_decoding_options_free": (None, [vp]),
        "heif_image_get_plane_readonly": (vp, [vp, c_int, ctypes.POINTER(c_int)]),
        "heif_image_get_primary_width": (c_int, [vp]),
        "heif_image_get_primary_height": (c_int, [vp]),
        "heif_image_release": (None, [vp]),
    }
    for name, (result, arguments) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = result, arguments
    return lib


def libheif() -> ctypes.CDLL | None:
    """pillow-heif's libheif with the tile API bound, or None where it has none (loaded once)."""
    if not _LIBRARY:
        path = _library_path()
        try:
            _LIBRARY.append(_bind(ctypes.CDLL(path)) if path else None)
        except (OSError, AttributeError):
            _LIBRARY.append(None)
    return _LIBRARY[0]


HEIF_ERROR_USAGE, HEIF_ERROR_MEMORY = 5, 6   # heif_error_Usage_error, heif_error_Memory_allocation_error


def _check(error: _Error) -> None:
    """libheif's error as ours: out of memory as MemoryError (the process's heap budget, which
    the sanitizer reports as ``too_large``), anything else as TileError (the input's)."""
    if error.code == 0:
        return
    message = (error.message or b"libheif error").decode("utf-8", "replace")
    # an allocation failure deep in a decoder escapes as a C++ exception, which libheif's API
    # reports as a usage error (seen under the heap budget)
    if error.code == HEIF_ERROR_MEMORY or (error.code == HEIF_ERROR_USAGE and "C++ exception" in message):
        raise MemoryError(f"libheif: {message}")
    raise TileError(message)


class _Opened(NamedTuple):
    """One libheif context of the file and its primary image's handle."""

    context: int
    handle: ctypes.c_void_p


class TiledHeic:
    """The primary image of one HEIC file, open in libheif; ``bands()`` reads it. Close it after.

    libheif decodes one tile at a time per context (a second thread on the same context waits),
    so the file is opened once per decoder thread, DECODER_THREADS in all, and each thread
    decodes with its own context: the tiles of a band come out in parallel.
    """

    def __init__(self, lib: ctypes.CDLL, path: Path, contexts: int = 1) -> None:
        self._lib = lib
        self._opened: list[_Opened] = []
        self._options = None
        self._decoder: ThreadPoolExecutor | None = None
        self._slots = itertools.count()
        self._slot = threading.local()    # a decoder thread's context: an index into _opened
        try:
            self._options = lib.heif_decoding_options_alloc()
            if not self._options:
                raise MemoryError("libheif could not allocate decoding options")
            # heif_decoding_options: uint8 version, then uint8 ignore_transformations (every version)
            ctypes.cast(self._options, ctypes.POINTER(ctypes.c_uint8))[1] = 1
            for _ in range(max(1, contexts)):
                self._opened.append(self._open(path))
            tiling = _Tiling()
            _check(lib.heif_image_handle_get_image_tiling(self._opened[0].handle, 0, ctypes.byref(tiling)))
        except BaseException:
            self.close()
            raise
        self.tile_size = tiling.tile_width, tiling.tile_height
        self.grid = tiling.num_columns, tiling.num_rows
        self.coded = tiling.image_width, tiling.image_height
        self.ops = self._transforms()

    def _open(self, path: Path) -> _Opened:
        lib = self._lib
        context = lib.heif_context_alloc()
        if not context:
            raise MemoryError("libheif could not allocate a context")
        handle = ctypes.c_void_p()
        try:
            _check(lib.heif_context_read_from_file(context, os.fsencode(path), None))
            _check(lib.heif_context_get_primary_image_handle(context, ctypes.byref(handle)))
        except BaseException:
            if handle:
                lib.heif_image_handle_release(handle)
            lib.heif_context_free(context)
            raise
        return _Opened(context, handle)

    def _transforms(self) -> tuple[Transpose, ...] | None:
        """The item's irot/imir as transposes, in its order; None when it lists anything else (clap)."""
        lib, (context, handle) = self._lib, self._opened[0]
        item = lib.heif_image_handle_get_item_id(handle)
        ids = (ctypes.c_uint32 * MAX_TRANSFORMS)()
        count = lib.heif_item_get_transformation_properties(context, item, ids, MAX_TRANSFORMS)
        if not 0 <= count < MAX_TRANSFORMS:
            return None
        ops = []
        for prop in ids[:count]:
            kind = lib.heif_item_get_property_type(context, item, prop)
            if kind == IROT:
                angle = lib.heif_item_get_property_transform_rotation_ccw(context, item, prop) % 360
                if angle:
                    if angle not in ROTATIONS:
                        return None
                    ops.append(ROTATIONS[angle])
            elif kind == IMIR:
                vertical = lib.heif_item_get_property_transform_mirror(context, item, prop) == MIRROR_VERTICAL
                ops.append(Transpose.FLIP_TOP_BOTTOM if vertical else Transpose.FLIP_LEFT_RIGHT)
            else:
                return None
        return tuple(ops)

    def usable(self) -> bool:
        """Whether bands can be read: only irot/imir to apply, and a grid that covers the picture
        with a bounded number of tiles."""
        (columns, rows), (tile_w, tile_h), (width, height) = self.grid, self.tile_size, self.coded
        return (self.ops is not None and 0 < columns * rows <= MAX_TILES and tile_w > 0 and tile_h > 0
                and 0 < width <= columns * tile_w and 0 < height <= rows * tile_h)

    def tile(self, column: int, row: int) -> Image.Image:
        """Coded tile (column, row), as libheif decodes it, as an RGB image of its own (decoded
        with the calling thread's context)."""
        lib, handle = self._lib, self._opened[getattr(self._slot, "index", 0)].handle
        image = ctypes.c_void_p()
        _check(lib.heif_image_handle_decode_image_tile(handle, ctypes.byref(image), COLORSPACE_RGB,
                                                       CHROMA_INTERLEAVED_RGB, self._options, column, row))
        try:
            stride = ctypes.c_int()
            plane = lib.heif_image_get_plane_readonly(image, CHANNEL_INTERLEAVED, ctypes.byref(stride))
            width, height = lib.heif_image_get_primary_width(image), lib.heif_image_get_primary_height(image)
            if not plane or width <= 0 or height <= 0 or stride.value < 3 * width:
                raise TileError(f"libheif gave tile ({column}, {row}) no RGB plane")
            pixels = (ctypes.c_uint8 * (stride.value * height)).from_address(plane)
            # frombuffer copies RGB into Pillow's own 4-byte layout: libheif's image can go at once
            return Image.frombuffer("RGB", (width, height), pixels, "raw", "RGB", stride.value, 1)
        finally:
            lib.heif_image_release(image)

    def _take_slot(self) -> None:
        self._slot.index = next(self._slots)   # each new decoder thread its own context

    def bands(self) -> Bands:
        """The picture's bands, its tiles decoded on threads of their own, ahead of the bands."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=len(self._opened), thread_name_prefix="heif-tiles",
                                               initializer=self._take_slot)
        return Bands(Placement(self.coded, self.ops or ()), self.tile_size, self.tile, self._decoder)

    def close(self) -> None:
        lib = self._lib
        if self._decoder is not None:
            # decodes still queued are dropped, the running ones finish: then libheif is ours to free
            self._decoder.shutdown(wait=True, cancel_futures=True)
            self._decoder = None
        while self._opened:
            context, handle = self._opened.pop()
            lib.heif_image_handle_release(handle)
            lib.heif_context_free(context)
        if self._options:
            lib.heif_decoding_options_free(self._options)
            self._options = None

    def __enter__(self) -> TiledHeic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tiles(path: Path) -> TiledHeic | None:
    """``path``'s primary image ready to be read in bands, or None when that is not possible here
    (the caller decodes it whole). libheif's refusals raise TileError."""
    lib = libheif()
    if lib is None:
        return None
    tiled = TiledHeic(lib, path, DECODER_THREADS)
    if not tiled.usable():
        tiled.close()
        return None
    return tiled
