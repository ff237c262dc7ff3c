"""Image reading: one record to an RGB picture, or many records to one uint8 array.

Every image a loader points at comes out as 8-bit RGB, whatever it is on disk
(grayscale, palette, CMYK, RGBA, 16-bit PNG, any size) or in memory (FER2013's
48x48 grayscale pixels). An unreadable or corrupt file raises `DatasetError`
naming the file, never a half-decoded picture; so does a file whose header
claims more than `MAX_PIXELS` pixels (a decompression bomb: a small PNG that
says 30000x30000), checked from the header before any pixel is decoded.
`find_small_images` lists images under `MIN_IMAGE_SIDE` pixels (from their
headers) so that callers can warn about them.

`load_images_array` decodes and resizes a whole split with a thread pool:
Pillow releases the GIL while decoding and resizing, so threads scale across
cores without the pickling cost of processes. Images are resized straight to
`size`x`size` (aspect ratio not kept), as `torchvision.transforms.Resize((s, s))`
does; face crops are square or nearly so.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pipeline.errors import DatasetError
from pipeline.data.records import ImageRecord

# Files ending in one of these are taken as images by folder-per-class loaders.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}

# Largest image decoded (width x height): Pillow's own decompression-bomb threshold. Face
# crops are far smaller; a header claiming more is refused before decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Images with a side under this many pixels are accepted but reported: too small to hold a face.
MIN_IMAGE_SIDE = 16


def compute_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB (16-bit and float modes rescaled, not clipped)."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode in _SIXTEEN_BIT_MODES:
            top = 65535.0
        else:
            top = float(arr.max()) if arr.size and arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")
    # RGBA/LA: the alpha channel is dropped (colour under it kept); CMYK and
    # YCbCr/LAB go through Pillow's conversion.
    return image.convert("RGB")


def _pixels_to_image(pixels: np.ndarray, image_id: str) -> Image.Image:
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise DatasetError(f"image {image_id}: in-memory pixels must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(arr).convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]))
    raise DatasetError(f"image {image_id}: in-memory pixels have shape {arr.shape}; expected HxW or HxWx3")


def _open_file(record: ImageRecord, draft_size: int | None = None) -> Image.Image:
    return _open_file_sized(record, draft_size)[0]


def _open_file_sized(record: ImageRecord, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The file as RGB, and its width and height from the header (before any draft or EXIF turn)."""
    path = record.path
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise _bomb(record, f"{width}x{height}")
            if draft_size is not None and image.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the file is much larger
                # than needed; it never goes below the requested size.
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                image = ImageOps.exif_transpose(image)
            return compute_rgb(image), (width, height)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path} (image {record.image_id}); "
                           "check the dataset root or restore the file") from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _bomb(record, f"{found.group(1)} pixels" if found else "too many pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read image file {path} (image {record.image_id}): {exc}; "
                           "the file is corrupt or not an image — replace or remove it") from None


def _bomb(record: ImageRecord, claimed: str) -> DatasetError:
    return DatasetError(f"image file {record.path} (image {record.image_id}) claims {claimed} in its header, more "
                        f"than the {MAX_PIXELS:,}-pixel limit: a decompression bomb or a corrupt file, not a face "
                        f"crop; remove it (or its line in the label file) and retry")


def find_small_images(records: Sequence[ImageRecord], min_side: int = MIN_IMAGE_SIDE) -> list[tuple[str, str]]:
    """(path, 'WxH') of file-backed images with a side under `min_side` pixels, from their headers only
    (unreadable files are left to the decoder, which names them)."""
    sizes = np.full((len(records), 2), -1, dtype=np.int64)
    for i, r in enumerate(records):
        if r.path is None:
            continue
        try:
            with Image.open(r.path) as image:
                sizes[i] = image.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return list_small_images(records, sizes, min_side)


def load_image(record: ImageRecord) -> Image.Image:
    """The record's image as an RGB Pillow image, from its file or its in-memory pixels."""
    if record.path is not None:
        return _open_file(record)
    if record.pixels is not None:
        return _pixels_to_image(record.pixels, record.image_id)
    raise DatasetError(f"image {record.image_id} has neither a path nor pixels")


def _load_resized(record: ImageRecord, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The record's image at size x size, and its file's header size ((-1, -1) for in-memory pixels)."""
    if record.path is not None:
        image, header = _open_file_sized(record, draft_size=size)
    else:
        image, header = load_image(record), (-1, -1)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8), header


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _run_chunked(n: int, work, workers: int, bar, chunk: int = 64) -> None:
    """Call work(start, stop) over [0, n) in chunks on `workers` threads; the first error
    cancels the chunks not yet started and propagates."""
    starts = range(0, n, chunk)
    if workers == 1:
        for start in starts:
            work(start, min(start + chunk, n))
            if bar is not None:
                bar.update(min(start + chunk, n) - start)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, start, min(start + chunk, n)) for start in starts]
        try:
            for start, fut in zip(starts, futures):
                fut.result()
                if bar is not None:
                    bar.update(min(start + chunk, n) - start)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _progress_bar(show: bool, total: int, desc: str):
    if not show:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img")


def load_images_array(records: Sequence[ImageRecord], size: int, workers: int | None = None,
                      progress: bool = False, desc: str = "decoding images") -> np.ndarray:
    """Decode and resize many images into one uint8 array of shape (N, size, size, 3).

    workers: threads (default: up to 8, one per core); 1 decodes in this thread.
    progress: show a tqdm progress bar. The first unreadable image raises
    `DatasetError` naming its file.
    """
    return decode_images(records, size, workers, progress, desc)[0]


def decode_images(records: Sequence[ImageRecord], size: int, workers: int | None = None,
                  progress: bool = False, desc: str = "decoding images") -> tuple[np.ndarray, np.ndarray]:
    """`load_images_array`, plus each file's width and height from its header (N, 2; -1 for
    in-memory pixels), read in the same pass: `find_small_images` of the decoded records is
    `list_small_images(records, sizes)`, without opening every file a second time."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    n = len(records)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    sizes = np.full((n, 2), -1, dtype=np.int64)
    if n == 0:
        return out, sizes

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            out[i], sizes[i] = _load_resized(records[i], size)

    workers = default_workers() if workers is None else max(1, int(workers))
    bar = _progress_bar(progress, n, desc)
    try:
        _run_chunked(n, work, workers, bar)
    finally:
        if bar is not None:
            bar.close()
    return out, sizes


def list_small_images(records: Sequence[ImageRecord], sizes: np.ndarray,
                      min_side: int = MIN_IMAGE_SIDE) -> list[tuple[str, str]]:
    """(path, 'WxH') of the file-backed records whose header size (from `decode_images`) has a
    side under `min_side`: the same list as `find_small_images` gives for decodable files."""
    return [(str(r.path), f"{w}x{h}") for r, (w, h) in zip(records, sizes.tolist())
            if r.path is not None and w >= 0 and min(w, h) < min_side]


def verify_images(records: Sequence[ImageRecord], workers: int | None = None,
                  progress: bool = False) -> None:
    """Fully decode every file-backed record's image; the first bad one raises `DatasetError`."""
    file_records = [r for r in records if r.path is not None]

    def work(start: int, stop: int) -> None:
        for i in range(start, stop):
            _open_file(file_records[i])

    workers = default_workers() if workers is None else max(1, int(workers))
    bar = _progress_bar(progress, len(file_records), "verifying images")
    try:
        _run_chunked(len(file_records), work, workers, bar)
    finally:
        if bar is not None:
            bar.close()
