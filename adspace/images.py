"""Validation of an uploaded ad image (a slot filler's picture).

The type is judged by the content, never by the file name or the browser's content type. An
accepted image is decoded and saved again by Pillow, so what we store and serve is pixels we
produced ourselves: no EXIF (locations, camera serials), ICC profiles, comments or text chunks,
and no trailing payload smuggled after the image data.

Decoding untrusted bytes is the costly part, and it runs in C outside the GIL, beyond the reach
of gunicorn's timeout. Its work is bounded before it starts: at most MAX_IMAGE_BYTES of input,
MAX_IMAGE_PIXELS declared pixels, and for JPEG at most MAX_JPEG_SCANS scans, counted from the
markers without decoding (a progressive JPEG can hold a 16-byte scan over and over, and every
scan is a pass over the whole picture: 130 000 of them fit in 2 MB and took minutes of a core).
At most DECODES_AT_ONCE images are decoded at once in a process, so a burst of uploads holds
that many cores at most. Whatever a decoder raises on a damaged file is a refusal ("damaged"),
never an error of ours.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 2 * 1024 * 1024
MIN_AD_SIDE = 16
MAX_AD_SIDE = 2048
# No ad can be larger than this, so any image declaring more pixels is refused from its header,
# before a single pixel is decoded (Pillow's own bomb limit, ~89 Mpx, is far too generous here).
MAX_IMAGE_PIXELS = MAX_AD_SIDE * MAX_AD_SIDE

# Encoders write 1 (baseline) to about 10 (progressive) scans; 64 leaves room for unusual ones.
# Each costs at most a pass over 4 Mpx (~0.3 ms here), so 64 is tens of milliseconds.
MAX_JPEG_SCANS = 64
DECODES_AT_ONCE = 1
# A request waits this long for its turn to decode before it is told to try again.
DECODE_WAIT_SECONDS = 10

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF")
JPEG_QUALITY = 90

_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif"}
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif"}
# Pillow's names for the formats people are most likely to upload by mistake.
_FRIENDLY_NAMES = {"WEBP": "WebP", "JPEG2000": "JPEG 2000", "ICO": "icon", "CUR": "cursor"}
# EXIF orientation -> the transpose that shows the picture the way viewers display it.
_ORIENTATION_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TRANSPOSES_SWAPPING_SIDES = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
}
# Modes a decoded PNG comes in that Pillow writes back as they are; anything else becomes RGBA.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}

ONLY_ACCEPTED = "Only PNG, JPEG and GIF images are accepted."


class ImageRejected(ValueError):
    """The upload is not an acceptable ad image; the message is meant for the uploader.

    `code` names the reason for callers and tests: empty, too_big, bad_ad_size, not_an_image,
    wrong_type, damaged, too_many_pixels, too_many_scans, animated, wrong_size, busy.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class ValidatedImage:
    content_type: str
    ext: str
    data: bytes  # re-encoded by Pillow, never the uploaded bytes
    width: int
    height: int
    sha256: str  # hex digest of `data`; the image document's key is built from it


def validate_ad_image(data: bytes, width: int, height: int) -> ValidatedImage:
    """Check that `data` is a still PNG, JPEG or GIF of exactly `width` x `height` px.

    Returns the image re-encoded in its own format; raises ImageRejected otherwise.
    """
    if not (MIN_AD_SIDE <= width <= MAX_AD_SIDE and MIN_AD_SIDE <= height <= MAX_AD_SIDE):
        raise ImageRejected(
            f"Ad sizes are {MIN_AD_SIDE} to {MAX_AD_SIDE} px ({width}x{height} was asked for).",
            "bad_ad_size",
        )
    if not data:
        raise ImageRejected("The file is empty.", "empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRejected("The image is larger than 2 MB.", "too_big")

    if data.startswith(b"\xff\xd8") and count_jpeg_scans(data, MAX_JPEG_SCANS) > MAX_JPEG_SCANS:
        raise ImageRejected(
            f"The JPEG has more than {MAX_JPEG_SCANS} scans; save it again as an ordinary "
            "(baseline or progressive) JPEG.",
            "too_many_scans",
        )
    if not _decode_slots.acquire(timeout=DECODE_WAIT_SECONDS):
        raise ImageRejected(
            "The server is busy checking other images; try again in a minute.", "busy"
        )
    try:
        return _decode_and_reencode(data, width, height)
    finally:
        _decode_slots.release()


_decode_slots = threading.BoundedSemaphore(DECODES_AT_ONCE)


def _decode_and_reencode(data: bytes, width: int, height: int) -> ValidatedImage:
    # Pillow warns (and past twice its limit, raises) about decompression bombs; both are a
    # refusal here. catch_warnings restores the filters on exit, so nothing leaks globally
    # (threads share the filter list meanwhile; the one filter added only concerns this class).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image, source_format = _open_and_decode(data, width, height)
            return _reencode(image, source_format)
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected(
                f"The image has more pixels than an ad can have "
                f"({MAX_AD_SIDE}x{MAX_AD_SIDE} px at most).",
                "too_many_pixels",
            )
        except Exception:
            # Any failure on untrusted bytes (truncated data, chunk lengths past the end,
            # oversized text or ICC chunks, broken GIF extensions, bad Huffman tables...) is the
            # upload's fault; the exception types vary by format, plugin and Pillow version.
            raise _damaged()


def _damaged() -> ImageRejected:
    return ImageRejected(
        "The image could not be read completely; the file may be damaged or cut short.",
        "damaged",
    )


def count_jpeg_scans(data: bytes, stop_after: int) -> int:
    """Scans (SOS markers) of the JPEG's first picture, read from its markers, decoding nothing.

    Counting stops at the first EOI (where decoders stop: an MPO's later pictures are never
    decoded), at the end of the data, or once past `stop_after`. Unreadable structure ends the
    count; the decoder then refuses the file.
    """
    scans, i, end = 0, 2, len(data)
    while i + 1 < end and scans <= stop_after:
        if data[i] != 0xFF:
            return scans
        while i + 1 < end and data[i + 1] == 0xFF:  # fill bytes before a marker
            i += 1
        if i + 1 >= end:
            return scans
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            return scans
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if i + 3 >= end:
            return scans
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker != 0xDA:
            continue
        scans += 1
        # Entropy-coded data runs to the next marker: 0xFF not followed by a stuffed 0x00 or a
        # restart marker (RST0-7).
        while True:
            i = data.find(b"\xff", i)
            if i < 0 or i + 1 >= end:
                return scans
            following = data[i + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                i += 2
                continue
            if following == 0xFF:
                i += 1
                continue
            break
    return scans


# SOI, RST0-7, TEM: markers without a length.
_STANDALONE_MARKERS = frozenset({0xD8, 0x01, *range(0xD0, 0xD8)})


def _open_and_decode(data: bytes, width: int, height: int) -> tuple[Image.Image, str]:
    """The decoded, upright image and its format (PNG, JPEG or GIF), once every check passed."""
    try:
        # Only the three accepted decoders are tried: the content decides, and the dozens of
        # other Pillow parsers (some far less hardened) never see the upload.
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data)

    declared_width, declared_height = image.size
    if declared_width * declared_height > MAX_IMAGE_PIXELS:
        raise ImageRejected(
            f"The image is {declared_width}x{declared_height} px, more than an ad can be "
            f"({MAX_AD_SIDE}x{MAX_AD_SIDE} px at most).",
            "too_many_pixels",
        )

    # A multi-picture JPEG (MPO: a phone's depth map or HDR gain map) is a still JPEG whose
    # first picture is what every browser shows; only GIF and APNG animations are refused.
    if image.format != "MPO" and getattr(image, "is_animated", False):
        raise ImageRejected("Animated images are not accepted.", "animated")

    source_format = "JPEG" if image.format == "MPO" else str(image.format)
    # Viewers show a JPEG turned by its EXIF orientation, so that is the size the uploader
    # sees and the one we check; the pixels are turned upright below, before EXIF is dropped.
    transpose = _orientation_transpose(image) if source_format == "JPEG" else None
    if transpose in _TRANSPOSES_SWAPPING_SIDES:
        shown_width, shown_height = declared_height, declared_width
    else:
        shown_width, shown_height = declared_width, declared_height
    if (shown_width, shown_height) != (width, height):
        raise _wrong_size((shown_width, shown_height), width, height)

    image.load()  # any failure is turned into "damaged" by the caller
    if transpose is not None:
        image = image.transpose(transpose)
    if image.size != (width, height):  # a GIF frame may extend its screen; trust only pixels
        raise _wrong_size(image.size, width, height)
    return image, source_format


def _reencode(image: Image.Image, source_format: str) -> ValidatedImage:
    transparency = image.info.get("transparency")

    clean = image.copy()
    # Pillow's writers fall back to `info` for ICC profiles, comments, loop counts and more;
    # an empty `info` means only what we pass below is written.
    clean.info = {}
    save_options: dict[str, object] = {}
    if source_format == "JPEG":
        if clean.mode not in ("L", "RGB"):
            # CMYK (print exports) and rarer modes: browsers render RGB JPEGs most reliably.
            clean = clean.convert("RGB")
        save_options = {"quality": JPEG_QUALITY}
    elif source_format == "PNG":
        if clean.mode not in _PNG_MODES:
            clean = clean.convert("RGBA")
            transparency = None  # folded into the alpha channel by the conversion
        if transparency is not None:
            save_options = {"transparency": transparency}
    else:  # GIF: a still GIF decodes to a palette (P) or grey (L) image
        if transparency is not None:
            save_options = {"transparency": transparency}

    out = io.BytesIO()
    clean.save(out, format=source_format, **save_options)
    encoded = out.getvalue()
    return ValidatedImage(
        content_type=_CONTENT_TYPES[source_format],
        ext=_EXTENSIONS[source_format],
        data=encoded,
        width=clean.width,
        height=clean.height,
        sha256=hashlib.sha256(encoded).hexdigest(),
    )


def _wrong_size(size: tuple[int, int], width: int, height: int) -> ImageRejected:
    return ImageRejected(
        f"The image is {size[0]}x{size[1]} px; this ad must be exactly {width}x{height} px.",
        "wrong_size",
    )


def _orientation_transpose(image: Image.Image) -> Image.Transpose | None:
    try:
        # For JPEG this parses the APP1 segment already read with the header; no decoding.
        orientation = image.getexif().get(0x0112)
    except Exception:
        # Broken EXIF is common from cheap cameras and editors; treat it as absent.
        return None
    return _ORIENTATION_TRANSPOSES.get(orientation) if isinstance(orientation, int) else None


def _unidentified(data: bytes) -> ImageRejected:
    name = _sniff_format_name(data)
    if name in ACCEPTED_FORMATS:
        # The signature says PNG/JPEG/GIF but the decoder could not make sense of the header.
        return ImageRejected(
            f"The file looks like a {name} image but could not be read; it may be damaged.",
            "damaged",
        )
    if name is None:
        return ImageRejected(
            f"The file is not an image we can read. {ONLY_ACCEPTED}", "not_an_image"
        )
    return ImageRejected(
        f"{name[0].upper()}{name[1:]} files are not accepted. {ONLY_ACCEPTED}", "wrong_type"
    )


def _sniff_format_name(data: bytes) -> str | None:
    """Name the kind of file, for the refusal message only; nothing here parses the file."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if head.startswith(b"%pdf-"):
        return "PDF"
    Image.init()  # register every plugin, so their signature checks are available
    prefix = data[:16]
    for format_name, (_factory, accept) in Image.OPEN.items():
        # `accept` is each plugin's magic-number test on the first 16 bytes: it reads bytes,
        # it does not parse the file.
        if accept is not None and accept(prefix):
            return _FRIENDLY_NAMES.get(format_name, format_name)
    if _looks_like_text(data[:512]):
        return "text"
    return None


def _looks_like_text(head: bytes) -> bool:
    # Incremental, so a multi-byte character cut at the end of `head` is not held against it.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head
