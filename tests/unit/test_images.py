"""Unit tests of mpdistill.inputs.images: encoding local files, URL passthrough, message building."""
from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from mpdistill.errors import ImageError
from mpdistill.inputs.images import ImagePolicy, build_messages, encode_image, image_parts

DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def make_image(path, size=(40, 20), fmt=None, mode="RGB"):
    """Write a small solid image made with pillow and return its path."""
    Image.new(mode, size, color=(200, 30, 30) if mode == "RGB" else None).save(path, format=fmt)
    return path


def inside(tmp_path, **kw):
    """The policy of an input file in `tmp_path`."""
    return ImagePolicy(base_dir=str(tmp_path), **kw)


def decode(url):
    """The (mime subtype, pillow image) inside a data URL."""
    head, payload = url.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return head[len("data:image/"):-len(";base64")], Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.mark.parametrize("name, fmt, subtype", [
    ("a.png", "PNG", "png"), ("a.jpg", "JPEG", "jpeg"), ("a.webp", "WEBP", "webp"), ("a.gif", "GIF", "png"),
])
def test_encode_local_image_sends_the_reencoded_picture(tmp_path, name, fmt, subtype):
    """A supported local image is decoded and re-encoded (GIF as PNG); the pixels survive."""
    path = make_image(tmp_path / name, fmt=fmt)
    got, img = decode(encode_image(str(path), inside(tmp_path)))
    assert got == subtype and img.size == (40, 20)
    assert img.convert("RGB").getpixel((5, 5))[0] > 150       # still the red picture


def test_relative_path_resolves_against_base_dir(tmp_path):
    """A relative reference is looked up in the input file's folder."""
    make_image(tmp_path / "pic.png")
    subtype, img = decode(encode_image("pic.png", inside(tmp_path)))
    assert subtype == "png" and img.size == (40, 20)


def test_downscale_keeps_aspect_and_max_side_png(tmp_path):
    """A PNG larger than max_side is shrunk to fit, keeps its aspect ratio and stays PNG."""
    path = make_image(tmp_path / "big.png", size=(400, 100))
    subtype, img = decode(encode_image(str(path), inside(tmp_path, max_side=100)))
    assert subtype == "png" and img.format == "PNG"
    assert img.size == (100, 25)


def test_downscale_keeps_webp_and_its_alpha(tmp_path):
    """A large WEBP with alpha is shrunk and stays a WEBP with alpha."""
    path = tmp_path / "big.webp"
    Image.new("RGBA", (120, 300), (0, 0, 255, 128)).save(path, format="WEBP")
    subtype, img = decode(encode_image(str(path), inside(tmp_path, max_side=60)))
    assert subtype == "webp" and img.format == "WEBP" and img.mode == "RGBA"
    assert max(img.size) == 60 and img.size == (24, 60)


def test_small_image_is_not_resized(tmp_path):
    """An image already within max_side keeps its size."""
    path = make_image(tmp_path / "small.jpg", fmt="JPEG")
    subtype, img = decode(encode_image(str(path), inside(tmp_path, max_side=1000)))
    assert subtype == "jpeg" and img.size == (40, 20)


def test_missing_file_names_the_path(tmp_path):
    """A missing image raises ImageError naming the path, chained to the OS error."""
    with pytest.raises(ImageError, match="not found.*nope.png") as info:
        encode_image("nope.png", inside(tmp_path))
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_corrupt_file_is_rejected(tmp_path):
    """Random bytes with a .png name raise ImageError naming the path."""
    path = tmp_path / "noise.png"
    path.write_bytes(random.Random(1234).randbytes(2048))   # seeded: never flaky
    with pytest.raises(ImageError, match="noise.png") as info:
        encode_image(str(path), inside(tmp_path))
    assert info.value.__cause__ is not None


def test_truncated_png_is_rejected(tmp_path):
    """A PNG cut in half fails verification with ImageError."""
    path = make_image(tmp_path / "cut.png", size=(64, 64))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageError, match="cut.png"):
        encode_image(str(path), inside(tmp_path))


@pytest.mark.parametrize("fmt, name", [("BMP", "x.bmp"), ("TIFF", "x.tiff")])
def test_unsupported_format_is_rejected(tmp_path, fmt, name):
    """A real image in a format the APIs do not take raises ImageError naming path and format."""
    path = make_image(tmp_path / name, fmt=fmt)
    with pytest.raises(ImageError, match=rf"{fmt}.*{name}"):
        encode_image(str(path), inside(tmp_path))


def test_directory_is_rejected(tmp_path):
    """A path that is a folder raises ImageError, not a raw OSError."""
    (tmp_path / "sub").mkdir()
    with pytest.raises(ImageError, match="sub.*not a regular file"):
        encode_image(str(tmp_path / "sub"), inside(tmp_path))


@pytest.mark.parametrize("url", [
    "http://example.com/a.png", "https://example.com/a.jpg?x=1", "HTTPS://EXAMPLE.COM/A.PNG", DATA_URL,
])
def test_urls_pass_through(url):
    """http(s) URLs and valid data URLs are sent unchanged."""
    assert encode_image(url) == url


@pytest.mark.parametrize("url", [
    "data:text/plain;base64,aGVsbG8=", "data:image/png,raw",
    "data:image/png;base64,", "data:image/png;base64,@@@",
])
def test_invalid_data_url_is_rejected(url):
    """A data URL that is not data:image/<fmt>;base64,<payload> raises ImageError."""
    with pytest.raises(ImageError, match="data URL"):
        encode_image(url)


def test_build_messages_leaves_text_messages_alone():
    """Messages without image parts are returned as the very same objects."""
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    out = build_messages(messages)
    assert out == messages and all(a is b for a, b in zip(out, messages))


def test_build_messages_encodes_and_normalizes_parts(tmp_path):
    """Every image part form becomes the OpenAI form with an encoded URL; detail and text are kept."""
    make_image(tmp_path / "p.png")
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "p.png", "detail": "low"}},
        {"type": "image_url", "image_url": "p.png"},
        {"type": "image", "image": "https://example.com/x.png"},
    ]
    message = {"role": "user", "content": content, "name": "u1"}
    (out,) = build_messages([message], inside(tmp_path))
    assert out is not message and message["content"] is content and content[1]["image_url"]["url"] == "p.png"
    assert out["name"] == "u1" and out["content"][0] == {"type": "text", "text": "look"}
    parts = out["content"][1:]
    assert all(p["type"] == "image_url" for p in parts)
    assert parts[0]["image_url"]["detail"] == "low"
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1]["image_url"] == {"url": parts[0]["image_url"]["url"]}
    assert parts[2]["image_url"] == {"url": "https://example.com/x.png"}


def test_build_messages_reports_a_bad_part():
    """An image part without a URL raises ImageError."""
    with pytest.raises(ImageError, match="without a url"):
        build_messages([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_image_parts_makes_unencoded_parts():
    """image_parts wraps each reference in an OpenAI image part without touching it."""
    assert image_parts(["a.png", DATA_URL]) == [
        {"type": "image_url", "image_url": {"url": "a.png"}},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
    ]


def test_image_parts_feed_build_messages(tmp_path):
    """A prompt plus images row becomes an encoded user message."""
    make_image(tmp_path / "q.jpg", fmt="JPEG")
    content = [{"type": "text", "text": "what is this?"}, *image_parts(["q.jpg"])]
    (out,) = build_messages([{"role": "user", "content": content}], inside(tmp_path, max_side=10))
    subtype, img = decode(out["content"][1]["image_url"]["url"])
    assert subtype == "jpeg" and max(img.size) == 10
