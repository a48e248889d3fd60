"""A hostile input through the real pool: images outside the input's folder, a FIFO, a device link."""
from __future__ import annotations

import os

from PIL import Image

from tests.conftest import Workdir, write_jsonl


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (0, 90, 200)).save(path, format="PNG")
    return path


def test_hostile_image_rows_end_as_error_rows_and_image_root_lets_them_in(tmp_path, mock_server):
    """Every escaping, endless or blocking image fails its row with path and rule; the rest is answered."""
    work = Workdir(tmp_path / "proj", mock_server.url)
    _png(work.root / "ok.png")
    secret = _png(tmp_path / "secret" / "s.png")
    os.mkfifo(work.root / "pipe.png")
    os.symlink("/dev/zero", work.root / "zero.png")
    part = lambda url: [{"role": "user", "content": [{"type": "text", "text": "see"},
                                                    {"type": "image_url", "image_url": {"url": url}}]}]
    write_jsonl(work.input, [
        {"id": "ok", "prompt": "look", "images": ["ok.png"]},
        {"id": "abs", "prompt": "look", "images": [str(secret)]},
        {"id": "dotdot", "prompt": "look", "images": ["../secret/s.png"]},
        {"id": "fifo", "prompt": "look", "images": ["pipe.png"]},
        {"id": "zero", "prompt": "look", "images": ["zero.png"]},
        {"id": "msg", "messages": part(f"file://{secret}")},
        {"custom_id": "batch", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "x", "messages": part(str(secret))}},
    ])
    first = work.run(processes=2, timeout=60)
    assert first.returncode == 3, first.stderr
    assert [r["id"] for r in work.results()] == ["ok"]
    reasons = {f["id"]: f["reason"] for f in work.failures()}
    assert set(reasons) == {"abs", "dotdot", "fifo", "zero", "msg", "batch"}
    for rid in ("abs", "dotdot", "msg", "batch"):
        assert str(secret) in reasons[rid] and "outside the allowed folders" in reasons[rid]
    assert "pipe.png" in reasons["fifo"] and "FIFO" in reasons["fifo"]
    assert "/dev/zero" in reasons["zero"]
    again = work.run("--retry-failed", "--image-root", str(secret.parent), processes=2, timeout=60)
    assert again.returncode == 3, again.stderr
    assert sorted(r["id"] for r in work.results()) == ["abs", "batch", "dotdot", "msg", "ok"]
    assert {f["id"] for f in work.failures()} == {"fifo", "zero"}
