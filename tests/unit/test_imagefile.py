"""Hostile image references: confined to the input's folder (or --image-root), regular files only, capped."""
from __future__ import annotations

import base64
import io
import os
import threading
import time

import pytest
from PIL import Image

from mpdistill.engine.worker import Task, WorkerSpec, execute, prepare
from mpdistill.errors import CallTimeoutError, ImageError, from_info
from mpdistill.inputs.imagefile import ImagePolicy, read_image_file
from mpdistill.inputs.images import build_messages, encode_image
from mpdistill.inputs.rows import row_from_object


def png(path, size=(8, 8), color=(10, 200, 10)):
    """Write a small PNG at `path` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


@pytest.fixture
def layout(tmp_path):
    """An input folder with one image, and a secret image outside it."""
    data = tmp_path / "data"
    png(data / "ok.png")
    png(tmp_path / "secret" / "s.png")
    return data, tmp_path / "secret" / "s.png"


def outside(ref, policy):
    """encode_image(ref) must refuse with the confinement rule; returns the message."""
    with pytest.raises(ImageError, match="outside the allowed folders") as info:
        encode_image(ref, policy)
    assert "--image-root" in str(info.value)
    return str(info.value)


def test_absolute_path_outside_the_input_folder_is_refused(layout):
    """An absolute path to a readable image elsewhere is refused, naming the path."""
    data, secret = layout
    assert str(secret) in outside(str(secret), ImagePolicy(str(data)))


def test_dotdot_and_tilde_escapes_are_refused(layout, monkeypatch):
    """`../` out of the input folder and `~` pointing elsewhere are both refused."""
    data, secret = layout
    outside("../secret/s.png", ImagePolicy(str(data)))
    monkeypatch.setenv("HOME", str(secret.parent))
    outside("~/s.png", ImagePolicy(str(data)))


def test_file_urls_are_local_paths_under_the_same_rule(layout):
    """file:// inside the folder is read; file:// outside or with a host is refused."""
    data, secret = layout
    policy = ImagePolicy(str(data))
    assert encode_image(f"file://{data / 'ok.png'}", policy).startswith("data:image/png;base64,")
    outside(f"file://{secret}", policy)
    outside(f"FILE://localhost{secret}", policy)
    with pytest.raises(ImageError, match="with a host"):
        encode_image(f"file://evil.example{secret}", policy)


def test_symlinks_are_judged_by_their_target(layout):
    """A link inside the folder that points out is refused; one that stays inside is read."""
    data, secret = layout
    os.symlink(secret, data / "link_out.png")
    os.symlink(data / "ok.png", data / "link_in.png")
    policy = ImagePolicy(str(data))
    assert str(secret) in outside("link_out.png", policy)
    assert encode_image("link_in.png", policy).startswith("data:image/png")


def test_image_root_widens_the_allowed_folders(layout):
    """--image-root DIR lets images come from DIR too, and from nowhere else."""
    data, secret = layout
    policy = ImagePolicy(str(data), roots=(str(secret.parent),))
    assert encode_image(str(secret), policy).startswith("data:image/png")
    png(secret.parent.parent / "elsewhere" / "e.png")
    outside("../elsewhere/e.png", policy)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    """A FIFO named as an image (nobody writing to it) is refused at once, not waited on."""
    os.mkfifo(tmp_path / "pipe.png")
    result = {}

    def read():
        try:
            encode_image("pipe.png", ImagePolicy(str(tmp_path)))
        except ImageError as err:
            result["error"] = str(err)
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO blocked the worker"
    assert "pipe.png" in result["error"] and "FIFO" in result["error"] and "regular file" in result["error"]


def test_dev_zero_is_refused_even_inside_an_allowed_root():
    """/dev/zero (a device that never ends) is refused by the regular-file rule, not read."""
    with pytest.raises(ImageError, match="/dev/zero.*not a regular file"):
        encode_image("/dev/zero", ImagePolicy("/dev"))


def test_an_image_over_the_cap_is_refused_naming_the_cap(tmp_path):
    """A file larger than --max-image-bytes is an ImageError naming the path and the limit."""
    big = png(tmp_path / "big.png", size=(64, 64))
    size = big.stat().st_size
    with pytest.raises(ImageError, match=rf"big.png.*--max-image-bytes \({size - 1} bytes\)"):
        encode_image("big.png", ImagePolicy(str(tmp_path), max_bytes=size - 1))
    assert encode_image("big.png", ImagePolicy(str(tmp_path), max_bytes=size))


def test_bytes_after_the_image_end_are_not_sent(tmp_path):
    """A PNG with data appended (and metadata) goes out re-encoded: the extra bytes never leave."""
    path = png(tmp_path / "tail.png")
    path.write_bytes(path.read_bytes() + b"TRAILING-PRIVATE-NOTES" * 50)
    url = encode_image("tail.png", ImagePolicy(str(tmp_path)))
    payload = base64.b64decode(url.split(",", 1)[1])
    assert b"TRAILING-PRIVATE-NOTES" not in payload
    assert Image.open(io.BytesIO(payload)).getpixel((1, 1)) == (10, 200, 10)


def test_an_error_names_the_path_never_the_content(tmp_path):
    """A file that is not an image fails with its path; none of its text is in the message."""
    (tmp_path / "notes.png").write_bytes(b"password=hunter2-very-private\n" * 20)
    with pytest.raises(ImageError) as info:
        encode_image("notes.png", ImagePolicy(str(tmp_path)))
    assert "notes.png" in str(info.value) and "hunter2" not in str(info.value)


def test_reading_past_the_deadline_is_a_call_timeout(tmp_path):
    """Image reading counts in the call's deadline: a read that starts after it is a timeout."""
    png(tmp_path / "ok.png")
    with pytest.raises(CallTimeoutError, match="deadline"):
        read_image_file(tmp_path / "ok.png", 1 << 20, deadline=time.monotonic() - 1)


def test_image_parts_inside_messages_and_batch_bodies_are_checked(layout):
    """An escaping image inside a messages row or a Batch-line body is refused before any call."""
    data, secret = layout
    part = {"type": "image_url", "image_url": {"url": str(secret)}}
    messages_row = row_from_object(1, {"messages": [{"role": "user", "content": [part]}]}, None)
    batch_row = row_from_object(2, {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "x", "messages": [{"role": "user", "content": [
                                        {"type": "image", "image": f"file://{secret}"}]}]}}, None)
    spec = WorkerSpec(endpoints=(), timeout=5.0, base_dir=str(data))
    for row in (messages_row, batch_row):
        outcome = execute(Task(1, "e", {"model": "m", **row.request}), object(), spec)
        err = from_info(outcome.error)
        assert type(err).__name__ == "ImageError" and str(secret) in str(err)
    allowed = build_messages([{"role": "user", "content": [{"type": "image_url", "image_url": "ok.png"}]}],
                             ImagePolicy(str(data)))
    assert allowed[0]["content"][0]["image_url"]["url"].startswith("data:image/png")
    ok = prepare({"messages": [{"role": "user", "content": [part]}]},
                 WorkerSpec(endpoints=(), timeout=5.0, base_dir=str(data), image_roots=(str(secret.parent),)))
    assert ok["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png")


def test_image_settings_are_checked_and_frozen(tmp_path):
    """--image-root must name folders (kept as a tuple); --max-image-bytes must be > 0."""
    from mpdistill.config import build_config
    from mpdistill.errors import ConfigError
    cfg = build_config({"image_roots": [str(tmp_path)]}, env={})
    assert cfg.image_roots == (str(tmp_path),) and cfg.max_image_bytes == 20 * 1024 * 1024
    with pytest.raises(ConfigError, match="image_roots: .*nowhere is not a folder"):
        build_config({"image_roots": [str(tmp_path / "nowhere")]}, env={})
    with pytest.raises(ConfigError, match="max_image_bytes"):
        build_config({"max_image_bytes": 0}, env={})
