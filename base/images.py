"""Every image the project reads is decoded here: photos to uint8 RGB, label maps to uint8 classes.

Accepted photos: PNG of every colour type and depth (grey, grey+alpha, RGB, RGBA, palette; 1 to
16 bits per sample), and JPEG and the other formats PIL reads in its modes 1, L, LA, P, PA, RGB,
RGBA and I;16 (16-bit grey). Every other mode is refused by name (CMYK, YCbCr, 32-bit integer or
float, ...). 16-bit samples are scaled to 8 bits (v * 255 / 65535, rounded); alpha is dropped.
Label maps are never scaled, their values are classes: a PNG of 8-bit grey, palette (its indices),
1-bit grey, or 16-bit grey whose values all fit 8 bits.

The header is read first and the size checked before any pixel is allocated: at most PIL's
decompression-bomb limit in pixels (2 x `Image.MAX_IMAGE_PIXELS`), and the decoded buffers within
this machine's memory (`base.memory`, the bound every size is checked against: a normal image is
never refused because the machine is busy). PNGs decode with libpng (cv2: full 16-bit data,
faster than PIL), the other formats with PIL, which refuses a truncated file. Every failure is an `ImageError` naming
the file; callers turn it into their package's error.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from base.memory import gib, physical_memory_bytes
from base.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # colour type -> PIL's name for it
_CHANNELS = {"1": 1, "L": 1, "P": 1, "I;16": 1, "LA": 2, "PA": 2, "RGB": 3, "RGBA": 4}
_NAMES = {"1": "grey", "L": "grey", "I;16": "grey", "LA": "grey+alpha", "P": "palette", "PA": "palette+alpha",
          "RGB": "RGB", "RGBA": "RGBA"}
_PIL_MODES = {"La": "LA", "RGBa": "RGBA", "RGBX": "RGBA", "I;16L": "I;16", "I;16B": "I;16", "I;16N": "I;16"}
_ROWS = 256  # rows scaled from 16 to 8 bits at a time: no full-size 32-bit temporary


class ImageError(UserError, ValueError):
    """An image that cannot be read, or is refused; the message is `PATH: reason`."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class ImageInfo:
    height: int
    width: int
    mode: str  # PIL's name: 1, L, LA, P, PA, RGB, RGBA, I;16
    bits: int  # per sample
    format: str  # PNG, JPEG, ...

    def describe(self) -> str:
        return f"{self.bits}-bit {_NAMES[self.mode]} {self.format}"


def _png_info(head: bytes, where) -> ImageInfo:
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise ImageError(where, "not a readable image (truncated PNG header)")
    width, height, bits, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in _PNG_MODES or not width or not height:
        raise ImageError(where, f"not a readable image (PNG colour type {colour}, size {width}x{height})")
    mode = "I;16" if colour == 0 and bits == 16 else "1" if colour == 0 and bits == 1 else _PNG_MODES[colour]
    return ImageInfo(height, width, mode, bits, "PNG")


def _pil_info(im: Image.Image, where) -> ImageInfo:
    mode = _PIL_MODES.get(im.mode, im.mode)
    if mode not in _CHANNELS:
        raise ImageError(where, f"unsupported image mode {im.mode!r} ({im.format}); accepted: grey, grey+alpha, "
                                "RGB, RGBA, palette, 16-bit grey")
    rawmodes = [t[3][0] if isinstance(t[3], tuple) else t[3] for t in (im.tile or [])]  # e.g. "RGB;16B"
    bits = 16 if mode == "I;16" or any(";16" in str(r) for r in rawmodes) else 8
    if bits == 16 and mode != "I;16":
        raise ImageError(where, f"unsupported image: 16-bit {mode} {im.format} (convert it to a 16-bit PNG)")
    return ImageInfo(im.height, im.width, mode, bits, im.format or "image")


def _check_size(info: ImageInfo, where, out_bytes: int) -> None:
    """Refuse before decoding: over PIL's pixel limit, or more memory than this machine has."""
    pixels = info.height * info.width
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if limit is not None and pixels > limit:
        raise ImageError(where, f"image size {info.height}x{info.width} ({pixels:,} pixels) exceeds the limit of "
                                f"{limit:,} pixels (PIL's guard against decompression bombs)")
    # The decoded samples, plus the converted copy and the result.
    need = pixels * (-(-_CHANNELS[info.mode] * info.bits // 8) + 2 * out_bytes)
    have = physical_memory_bytes()
    if need > have:
        raise ImageError(where, f"{info.height}x{info.width} {info.describe()}: decoding needs about {gib(need)}, "
                                f"more than this machine's {gib(have)} of memory")


def _open_pil(data, where) -> Image.Image:
    """PIL's lazy open (header only) of encoded bytes or an open binary file."""
    try:
        return Image.open(io.BytesIO(data) if isinstance(data, (bytes, memoryview)) else data)
    except Image.DecompressionBombError as err:
        raise ImageError(where, f"{err} (PIL's guard against decompression bombs)") from None
    except UnidentifiedImageError:
        raise ImageError(where, "not a readable image (not a format PIL knows, or damaged)") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(where, f"not a readable image ({err})") from None


def check_whole(source, where=None) -> None:
    """ImageError unless the image decodes to its last pixel: the proof for an image stored as
    found (no conversion, no copy of the pixels)."""
    data, where = _source(source, where)
    _check_size(_info(data, where), where, 3)
    im = _open_pil(data, where)
    try:
        with im:
            im.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(where, f"not a readable image ({err})") from None


def _pil_array(data: bytes, where, mode: str | None) -> np.ndarray:
    """PIL's pixels, converted to `mode` unless None; a truncated or damaged file is an ImageError
    (PIL's LOAD_TRUNCATED_IMAGES stays off)."""
    im = _open_pil(data, where)
    try:
        with im:
            return np.asarray(im.convert(mode) if mode else im)
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(where, f"not a readable image ({err})") from None


def _source(source, where):
    """(encoded bytes, name for messages) of a path or of encoded bytes: bytes, or any buffer (a
    record's uint8 array) viewed in place as a memoryview, never copied."""
    if isinstance(source, (str, Path)):
        try:
            return Path(source).read_bytes(), where or source
        except OSError as err:
            raise ImageError(where or source, f"cannot read ({err.strerror or err})") from None
    return (source if isinstance(source, bytes) else memoryview(source).cast("B")), where or "image"


def _is_png(data) -> bool:
    return data[:len(PNG_SIGNATURE)] == PNG_SIGNATURE


def read_info(source, where=None) -> ImageInfo:
    """The header of an image file or encoded bytes (no pixels decoded); ImageError if its mode is
    not accepted or its size is over the bounds."""
    if not isinstance(source, (str, Path)):
        data, where = _source(source, where)
        info = _info(data, where)
    else:
        where = where or source
        try:
            with open(source, "rb") as fh:
                head = fh.read(33)
                fh.seek(0)
                info = _png_info(head, where) if _is_png(head) else _pil_info(_open_pil(fh, where), where)
        except OSError as err:
            raise ImageError(where, f"cannot read ({err.strerror or err})") from None
    _check_size(info, where, 3)
    return info


def _info(data, where) -> ImageInfo:
    return _png_info(bytes(data[:33]), where) if _is_png(data) else _pil_info(_open_pil(data, where), where)


def _decode_png(data, where) -> np.ndarray:
    """libpng's samples, uint8 or uint16: (H,W) grey, (H,W,3) BGR or (H,W,4) BGRA."""
    # libpng returns a partly grey image for a cut-off file: require the closing IEND chunk (the
    # last bytes, as every writer puts it; searched for only if data follows it).
    if data[-len(PNG_END):] != PNG_END and bytes(data).rfind(PNG_END) < 0:
        raise ImageError(where, "not a readable image (truncated PNG: no IEND chunk)")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageError(where, "not a readable image (corrupt PNG data)")
    return array


def _to_8_bits(array: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 as v * 255 / 65535 rounded (half up), band by band; uint8 unchanged."""
    if array.dtype == np.uint8:
        return array
    out = np.empty(array.shape, np.uint8)
    for r in range(0, array.shape[0], _ROWS):
        out[r:r + _ROWS] = (array[r:r + _ROWS].astype(np.uint32) * 255 + 32767) // 65535
    return out


def _png_rgb(array: np.ndarray) -> np.ndarray:
    """libpng's samples (grey+alpha comes as BGRA, grey repeated) -> uint8 RGB."""
    array = _to_8_bits(array)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def decode_image(source, where=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file or encoded bytes (`where` names bytes in messages)."""
    data, where = _source(source, where)
    info = _info(data, where)
    _check_size(info, where, 3)
    if info.format == "PNG":
        return _png_rgb(_decode_png(data, where))
    if info.mode == "I;16":
        return _png_rgb(_pil_array(data, where, None).astype(np.uint16, copy=False))
    return _pil_array(data, where, "RGB")


def decode_label(source, where=None, what: str = "label", stored: bool = False) -> np.ndarray:
    """(H, W) uint8 class values of a label PNG: 8-bit or 1-bit grey, palette (its indices), or
    16-bit grey whose values fit 8 bits. Never scaled. `what` names the map in messages.
    `stored`: a record's label, which the build wrote as 8-bit grey: nothing else is accepted."""
    data, where = _source(source, where)
    if not _is_png(data):
        raise ImageError(where, f"unreadable PNG (no PNG signature; a {what} map must be a PNG)")
    info = _png_info(bytes(data[:33]), where)
    if stored and (info.mode, info.bits) != ("L", 8):
        raise ImageError(where, f"got a {info.describe()}")
    if info.mode not in ("L", "P", "1", "I;16") or (info.mode == "L" and info.bits != 8):
        raise ImageError(where, f"expected a single-channel 8-bit {what} PNG (or a palette PNG), got {info.describe()}")
    _check_size(info, where, 1)
    if info.mode in ("P", "1"):  # libpng would expand these to colours or 0/255: PIL keeps the indices
        return _pil_array(data, where, None).astype(np.uint8, copy=False)
    label = _decode_png(data, where)
    if label.dtype == np.uint16:
        top = int(label.max())
        if top > 255:
            raise ImageError(where, f"16-bit label values up to {top} do not fit 8 bits (classes 0..255)")
        label = label.astype(np.uint8)
    return label
