"""Image reading: every on-disk and in-memory kind comes out as RGB; bad files name themselves."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import DatasetError
from pipeline.data.images import (decode_images, find_small_images, list_small_images, load_image,
                                  load_images_array)
from pipeline.data.records import ImageRecord


def _record(path, image_id="img"):
    return ImageRecord(image_id=image_id, split="test", label=0, path=path)


def _gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                     np.full_like(x, 128)], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rgb = _gradient(40, 40)
    files = {}
    Image.fromarray(rgb).save(d / "rgb.jpg", quality=95)
    files["rgb.jpg"] = (40, 40)
    Image.fromarray(rgb[:, :, 0]).save(d / "gray.jpg")
    files["gray.jpg"] = (40, 40)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    files["cmyk.jpg"] = (40, 40)
    Image.fromarray(np.dstack([rgb, np.full((40, 40), 100, np.uint8)])).save(d / "rgba.png")
    files["rgba.png"] = (40, 40)
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    files["palette.png"] = (40, 40)
    Image.fromarray(_gradient(23, 37)).save(d / "odd.png")
    files["odd.png"] = (37, 23)
    Image.fromarray(_gradient(31, 17)).save(d / "odd.bmp")
    files["odd.bmp"] = (17, 31)
    return d, files


@pytest.mark.parametrize("name", ["rgb.jpg", "gray.jpg", "cmyk.jpg", "rgba.png", "palette.png",
                                  "odd.png", "odd.bmp"])
def test_load_image_gives_rgb_of_native_size(image_files, name):
    d, files = image_files
    image = load_image(_record(d / name))
    assert image.mode == "RGB"
    assert image.size == files[name]
    arr = np.asarray(image)
    assert arr.dtype == np.uint8 and arr.shape == (files[name][1], files[name][0], 3)


def test_grayscale_becomes_three_equal_channels(image_files):
    d, _ = image_files
    arr = np.asarray(load_image(_record(d / "gray.jpg"))).astype(int)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert arr.max() > 200 and arr.min() < 30   # the gradient survived


def test_cmyk_keeps_colours(image_files):
    d, _ = image_files
    rgb = np.asarray(load_image(_record(d / "rgb.jpg"))).astype(int)
    cmyk = np.asarray(load_image(_record(d / "cmyk.jpg"))).astype(int)
    assert np.abs(rgb - cmyk).mean() < 10


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    arr = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = np.asarray(load_image(_record(tmp_path / "deep.png")))
    assert out.shape == (16, 16, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 120 <= out[8, 0, 0] <= 135        # mid-grey stays mid-grey


def test_pixels_record_loads_as_rgb():
    pixels = np.arange(48 * 48, dtype=np.uint32).reshape(48, 48).astype(np.uint8)
    image = load_image(ImageRecord(image_id="fer_000001", split="train", label=0, pixels=pixels))
    arr = np.asarray(image)
    assert image.mode == "RGB" and arr.shape == (48, 48, 3)
    assert (arr[..., 0] == pixels).all() and (arr[..., 2] == pixels).all()


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_corrupt_or_missing_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken_face.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError, match="broken_face.jpg"):
        load_image(_record(path, "broken_face"))


def test_truncated_jpeg_names_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(_gradient(64, 64)).save(good, quality=95)
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cut.jpg"):
        load_image(_record(tmp_path / "cut.jpg"))


def test_load_images_array_matches_single_loads(image_files):
    d, files = image_files
    records = [_record(d / name, name) for name in files]
    records.append(ImageRecord(image_id="px", split="test", label=0,
                               pixels=np.full((48, 48), 77, np.uint8)))
    arr = load_images_array(records, 32, workers=2)
    assert arr.shape == (len(records), 32, 32, 3) and arr.dtype == np.uint8
    single = load_images_array(records, 32, workers=1, progress=True)
    assert np.array_equal(arr, single)
    # A 40x40 PNG resized on its own gives the same pixels.
    i = list(files).index("rgba.png")
    expected = np.asarray(load_image(records[i]).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(arr[i], expected)
    assert (arr[-1] == 77).all()


def test_load_images_array_native_size_is_unchanged(image_files):
    d, _ = image_files
    record = _record(d / "rgba.png")
    arr = load_images_array([record], 40)
    assert np.array_equal(arr[0], np.asarray(load_image(record)))


def test_load_images_array_reports_the_bad_file(image_files, tmp_path):
    d, files = image_files
    (tmp_path / "rotten.jpg").write_bytes(b"\xff\xd8garbage")
    records = [_record(d / name, name) for name in files] * 20
    records.insert(70, _record(tmp_path / "rotten.jpg", "rotten"))
    with pytest.raises(DatasetError, match="rotten.jpg"):
        load_images_array(records, 16, workers=2)


def test_load_images_array_empty():
    assert load_images_array([], 8).shape == (0, 8, 8, 3)


def test_decode_images_reads_header_sizes_and_small_images_in_one_pass(image_files, tmp_path):
    """The header sizes come with the pixels; the small-image list from them equals
    `find_small_images` (which opens every file again), in-memory pixels are never listed."""
    d, files = image_files
    Image.fromarray(_gradient(9, 30)).save(tmp_path / "thin.png")
    Image.fromarray(_gradient(1, 1)).save(tmp_path / "dot.jpg")
    records = [_record(d / name, name) for name in files] + [_record(tmp_path / "thin.png", "thin"),
                                                             _record(tmp_path / "dot.jpg", "dot")]
    records.append(ImageRecord(image_id="px", split="test", label=0, pixels=np.full((8, 8), 5, np.uint8)))
    images, sizes = decode_images(records, 16, workers=2)
    assert np.array_equal(images, load_images_array(records, 16, workers=1))
    assert sizes.tolist() == [list(files[name]) for name in files] + [[30, 9], [1, 1], [-1, -1]]
    small = list_small_images(records, sizes)
    assert small == find_small_images(records)
    assert small == [(str(tmp_path / "thin.png"), "30x9"), (str(tmp_path / "dot.jpg"), "1x1")]
