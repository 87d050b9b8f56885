"""The one decode policy of image files (core/data/images.py): torchcodec where it reads a format to PIL's pixels,
PIL for the rest, one resize for both."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from dpl.core.data import images

needs_codec = pytest.mark.skipif(images._codecs() is None, reason="torchcodec cannot be imported here")


def encoded(im, fmt, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def picture(h, w, seed=0):
    """A smooth colour picture with noise (JPEG-like content) and a random alpha channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h)], -1)
    rgb = Image.fromarray(np.clip(rgb + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8))
    return rgb, Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))


def codec_files(h, w):
    """Files torchcodec decodes: name -> bytes."""
    rgb, alpha = picture(h, w)
    grey = rgb.convert("L")
    rgba, la = rgb.copy(), grey.copy()
    rgba.putalpha(alpha)
    la.putalpha(alpha)
    files = {f"{m}.png": encoded(im, "PNG") for m, im in (("rgb", rgb), ("grey", grey), ("rgba", rgba), ("la", la))}
    for orientation in range(1, 10):              # 9 is no orientation: neither transposes
        exif = Image.Exif()
        exif[0x0112] = orientation
        files[f"o{orientation}.jpg"] = encoded(rgb, "JPEG", exif=exif, quality=90)
        files[f"grey-o{orientation}.jpg"] = encoded(grey, "JPEG", exif=exif)
    files["444.jpg"] = encoded(rgb, "JPEG", subsampling=0)
    files["progressive.jpg"] = encoded(rgb, "JPEG", progressive=True)
    files["xmp-without-orientation.jpg"] = encoded(rgb, "JPEG", xmp=b"<x:xmpmeta/>")
    files["lossy.webp"] = encoded(rgb, "WEBP")
    files["rgba.webp"] = encoded(rgba, "WEBP", lossless=True)
    gamma = PngImagePlugin.PngInfo()
    gamma.add(b"gAMA", (45455).to_bytes(4, "big"))       # neither applies it
    files["gamma.png"] = encoded(rgb, "PNG", pnginfo=gamma)
    return files


def pil_files(h, w):
    """Files PIL decodes: what torchcodec cannot read to PIL's pixels, or what PIL reads faster."""
    rgb, _ = picture(h, w)
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", '<x tiff:Orientation="6"/>')
    exif = Image.Exif()
    exif[0x0112] = 6
    first = rgb.getpixel((0, 0))
    return {
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "xmp-orientation.jpg": encoded(rgb, "JPEG", xmp=b'<r:Description tiff:Orientation="8"/>'),
        "palette.png": encoded(rgb.convert("P"), "PNG"),
        "deep.png": encoded(Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257 + 100), "PNG"),
        "colour-key.png": encoded(rgb, "PNG", transparency=first),
        "exif.png": encoded(rgb, "PNG", exif=exif),
        "xmp.png": encoded(rgb, "PNG", pnginfo=xmp),
        "exif.webp": encoded(rgb, "WEBP", exif=exif),
        "animated.webp": encoded(rgb, "WEBP", save_all=True, append_images=[rgb.rotate(90)]),
        "palette.gif": encoded(rgb.convert("P"), "GIF"),
        "plain.bmp": encoded(rgb, "BMP"),
    }


def pil_resized(raw, size, channels):
    """The policy with PIL's own resize: what `decode` did before torch resized."""
    pixels = images._decode_pil(raw, size, channels)
    im = Image.fromarray(pixels[0] if channels == 1 else pixels.transpose(1, 2, 0))
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    out = np.array(im.crop((left, top, left + size, top + size)))
    return out[None] if channels == 1 else out.transpose(2, 0, 1)


@needs_codec
@pytest.mark.parametrize("shape", [(28, 28), (30, 20), (37, 53)])
def test_torchcodec_decodes_to_pils_pixels_orientation_alpha_and_grey_included(shape):
    for name, raw in codec_files(*shape).items():
        assert images._codec_kind(raw, 28) is not None, name       # 28: no shorter side is 2 x 28, nothing to draft
        for channels in (1, 3):
            got, want = images._decode_codec(raw, 28, channels), images._decode_pil(raw, 28, channels)
            assert got.shape == want.shape and np.array_equal(got, want), (name, channels)


@needs_codec
def test_alpha_over_black_and_luma_round_as_pil_for_every_value():
    v, a = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    rgba = Image.fromarray(np.stack([v, v.T, 255 - v, a], -1), "RGBA")
    la = Image.fromarray(np.stack([v, a], -1), "LA")
    for im in (rgba, la):
        raw = encoded(im, "PNG")
        for channels in (1, 3):
            assert np.array_equal(images._decode_codec(raw, 256, channels), images._decode_pil(raw, 256, channels))


@needs_codec
def test_what_torchcodec_does_not_read_as_pil_goes_to_pil():
    for name, raw in pil_files(30, 20).items():
        assert images._codec_kind(raw, 16) is None, name
    jpeg = encoded(picture(40, 60)[0], "JPEG")
    assert images._codec_kind(jpeg, 21) == "jpeg"       # shorter side 40 < 2 x 21: nothing for draft to gain
    assert images._codec_kind(jpeg, 20) is None         # 40 >= 2 x 20: PIL decodes at half scale


@pytest.mark.parametrize("shape", [(28, 28), (30, 20), (37, 53), (64, 100)])
def test_decode_is_the_policy_with_pils_resize_within_2(shape):
    files = {**codec_files(*shape), **pil_files(*shape)}
    for name, raw in files.items():
        for size in (8, 16, 28, 40):
            for channels in (1, 3):
                got, want = images.decode(raw, size, channels), pil_resized(raw, size, channels)
                assert got.shape == want.shape == (channels, size, size) and got.dtype == np.uint8
                diff = np.abs(got.astype(int) - want.astype(int))
                assert diff.max() <= 2 and (diff > 1).mean() < 1e-3, (name, size, channels)
                if shape == (size, size):
                    assert diff.max() == 0, (name, size, channels)       # no resize: PIL's pixels exactly


def test_without_torchcodec_pil_decodes_the_same_pixels(monkeypatch):
    files = {**codec_files(30, 20), **pil_files(30, 20)}
    with_codec = {(n, c): images.decode(raw, 16, c) for n, raw in files.items() for c in (1, 3)}
    monkeypatch.setattr(images, "_codecs", lambda: None)
    for (name, channels), pixels in with_codec.items():
        assert np.array_equal(images.decode(files[name], 16, channels), pixels), (name, channels)


def test_damaged_files_still_raise():
    rgb, _ = picture(64, 64)
    for raw in (encoded(rgb, "JPEG"), encoded(rgb, "PNG"), encoded(rgb, "WEBP")):
        for cut in (len(raw) // 2, 40):
            with pytest.raises(Exception):
                images.decode(raw[:cut], 16, 3)
    for raw in (b"", b"not an image at all\n"):
        with pytest.raises(Exception):
            images.decode(raw, 16, 3)


def test_resize_keeps_the_centre_and_the_aspect_ratio():
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 30:50] = 255                   # a centred vertical bar a quarter of the width
    bar = images.decode(encoded(Image.fromarray(wide), "PNG"), 20, 3)[0, 10]
    assert bar[6:14].min() == 255 and bar[:4].max() == 0 and bar[16:].max() == 0
    tiny = images.decode(encoded(Image.fromarray(np.full((5, 9), 77, dtype=np.uint8)), "PNG"), 12, 1)
    assert tiny.shape == (1, 12, 12) and np.all(tiny == 77)         # upscaled: a flat image stays flat
    assert torch.from_numpy(tiny).is_contiguous()
