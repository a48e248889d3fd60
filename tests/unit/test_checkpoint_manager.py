"""Unit tests of mpdistill.state.checkpoint: watermark bookkeeping, atomic safe files, helpers."""
from __future__ import annotations

import os
import pickle
import random
import re
import stat

import pytest

from mpdistill.state import checkpoint as cp
from mpdistill.state.checkpoint import (FORMAT_VERSION, CheckpointManager, backup_file, checkpoint_path,
                                  clear_checkpoint, list_checkpoints, load_checkpoint, safe_name)
from mpdistill.state.fingerprint import fingerprint_input, input_unchanged
from mpdistill.errors import CheckpointError


def make(tmp_path, **kwargs) -> CheckpointManager:
    kwargs.setdefault("directory", tmp_path / "ckpt")
    return CheckpointManager(**kwargs)


def write_raw(path, obj_bytes: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(obj_bytes)
    os.chmod(path, mode)


# --- watermark and sparse set ---------------------------------------------------------------


def test_out_of_order_keys_advance_watermark_and_sparse(tmp_path):
    """Keys done out of order sit in the sparse set until the gap below them fills."""
    m = make(tmp_path)
    for key in (3, 5, 2):
        m.mark_done(key)
    assert (m.watermark, m.sparse) == (1, {2, 3, 5})
    m.mark_done(1)
    assert (m.watermark, m.sparse) == (4, {5})
    m.mark_done(4)
    assert (m.watermark, m.sparse) == (6, set())
    assert m.is_done(5) and not m.is_done(6) and not m.is_done(0)


def test_processed_indices_matches_naive_set(tmp_path):
    """After random out-of-order completion, processed_indices and count equal a naive set."""
    rng = random.Random(7)
    m = make(tmp_path, start=6001)
    keys = list(range(6001, 8001))
    rng.shuffle(keys)
    naive = set()
    for key in keys[:1500] + keys[:10]:       # repeats are harmless
        m.mark_done(key)
        naive.add(key)
    assert m.processed_indices == naive
    assert m.processed_count == len(naive)
    assert all(key > m.watermark for key in m.sparse)
    assert all(m.is_done(k) == (k in naive) for k in range(6000, 8002))


def test_key_below_start_is_refused(tmp_path):
    """A key below the start key is a caller bug, not a done row."""
    m = make(tmp_path, start=10)
    with pytest.raises(ValueError):
        m.mark_done(9)


def test_input_position_advances_only_over_known_offsets(tmp_path):
    """input_position moves only when the watermark passes a key whose end offset is known."""
    m = make(tmp_path)
    m.mark_done(2, end_offset=20)
    assert m.input_position is None            # 2 is sparse: watermark still at 1
    m.mark_done(1)                            # offset of 1 unknown, but passing 2 (known) counts
    assert (m.watermark, m.input_position) == (3, (3, 20))
    m.mark_done(4)                            # no offset for 4
    m.mark_done(3, end_offset=30)
    assert (m.watermark, m.input_position) == (5, (4, 30))
    m.mark_done(5, end_offset=50)
    assert m.input_position == (6, 50)
    assert m._offsets == {}


def test_offsets_kept_only_for_sparse_keys(tmp_path):
    """End offsets are held for sparse keys only and dropped as the watermark passes them."""
    m = make(tmp_path)
    for key in range(2, 102):
        m.mark_done(key, end_offset=key * 10)
    assert len(m._offsets) == 100
    m.mark_done(1, end_offset=10)
    assert m._offsets == {} and m.input_position == (102, 1010)


def test_reset_forgets_state_but_keeps_file(tmp_path):
    """reset() starts over in memory and leaves the saved file alone."""
    m = make(tmp_path)
    m.mark_done(1)
    m.save()
    m.reset()
    assert m.processed_count == 0 and m.watermark == 1 and m.path.exists()


# --- save / load ----------------------------------------------------------------------------


def filled(tmp_path, **kwargs) -> CheckpointManager:
    m = make(tmp_path, **kwargs)
    for key, off in ((1, 10), (2, 20), (4, 40), (7, None)):
        m.mark_done(key, end_offset=off)
    m.record(output_offset=123, errors_offset=45, ok=3, failed=1, rows=0)
    m.elapsed += 1.5
    m.meta = {"input_fingerprint": {"size": 9}, "config_fingerprint": "abc", "iteration": 2}
    return m


def test_save_load_round_trip(tmp_path):
    """Everything saved comes back: done keys, offsets, counters, elapsed, meta, saved_at."""
    m = filled(tmp_path)
    m.save()
    n = make(tmp_path)
    assert n.load() is True
    assert n.to_dict() == m.to_dict()
    assert n.processed_indices == {1, 2, 4, 7}
    assert n.input_position == (3, 20)
    n.mark_done(3)                            # sparse offset of 4 survived the round trip
    assert n.input_position == (5, 40)


def test_load_without_file_returns_false(tmp_path):
    """load() on a fresh directory reports False and leaves the state empty."""
    m = make(tmp_path)
    assert m.load() is False and m.processed_count == 0


def test_save_creates_private_dir_and_file(tmp_path):
    """save() creates a new directory 0o700 and the file 0o600."""
    m = filled(tmp_path)
    m.save()
    assert stat.S_IMODE(os.stat(m.path.parent).st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(m.path).st_mode) == 0o600
    assert m.path.name == "default_checkpoint.pkl"


def test_save_leaves_no_temp_files(tmp_path):
    """Repeated saves leave exactly one file in the checkpoint directory."""
    m = filled(tmp_path)
    for _ in range(5):
        m.save()
    assert [p.name for p in m.path.parent.iterdir()] == [m.path.name]


def test_crash_in_replace_keeps_old_file(tmp_path, monkeypatch):
    """A save that dies at os.replace leaves the previous checkpoint intact and no temp file."""
    m = filled(tmp_path)
    m.save()
    before = m.path.read_bytes()
    m.mark_done(3)

    def boom(src, dst):
        raise OSError("simulated crash")
    monkeypatch.setattr(cp.os, "replace", boom)
    with pytest.raises(CheckpointError, match="cannot save"):
        m.save()
    monkeypatch.undo()
    assert m.path.read_bytes() == before
    assert [p.name for p in m.path.parent.iterdir()] == [m.path.name]


def test_record_saves_every_n_rows(tmp_path):
    """record() saves once save_interval rows have accumulated, then counts again from zero."""
    m = make(tmp_path, save_interval=5)
    results = [m.record(output_offset=i * 10, errors_offset=0, ok=2, rows=2) for i in range(1, 7)]
    assert results == [False, False, True, False, False, True]
    assert load_checkpoint("default", tmp_path / "ckpt")["output_offset"] == 60
    assert m.ok == 12


def test_unplain_meta_refused_at_save(tmp_path):
    """meta that the restricted unpickler would refuse is rejected before writing."""
    m = make(tmp_path)
    m.meta = {"when": object()}
    with pytest.raises(CheckpointError, match="plain data"):
        m.save()
    assert not m.path.exists()


def test_pickle_size_does_not_grow_with_rows_done(tmp_path):
    """The pickled checkpoint at 1,000,000 contiguous done keys is as big as at 1,000."""
    def size(done: int) -> int:
        m = make(tmp_path, start=100_000)     # both watermarks pickle as 4-byte ints
        for key in range(100_000, 100_000 + done):
            m.mark_done(key, end_offset=key * 100)
        for key in (100_000 + done + 5, 100_000 + done + 9):
            m.mark_done(key)                  # a small sparse set above the watermark
        m.saved_at = 0.0
        return len(pickle.dumps(m.to_dict(), protocol=pickle.HIGHEST_PROTOCOL))
    small, big = size(1_000), size(1_000_000)
    assert small == big and big < 1024


# --- unsafe and unreadable files -----------------------------------------------------------


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_malicious_class(tmp_path):
    """A pickle that would call os.system is refused and never executed."""
    marker = tmp_path / "pwned"
    path = checkpoint_path("default", tmp_path / "ckpt")
    write_raw(path, pickle.dumps({"version": FORMAT_VERSION, "x": _Evil(marker)}))
    with pytest.raises(CheckpointError, match="not plain data"):
        make(tmp_path).load()
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_builtins(tmp_path):
    """Even builtins other than set/frozenset (eval) are refused."""
    path = checkpoint_path("default", tmp_path / "ckpt")
    write_raw(path, pickle.dumps(eval, protocol=4))
    with pytest.raises(CheckpointError, match="builtins.eval"):
        make(tmp_path).load()


def test_sets_in_pickles_of_any_protocol_load(tmp_path):
    """set/frozenset pickled with an old protocol (which names builtins.set) are accepted."""
    m = filled(tmp_path)
    state = m.to_dict() | {"sparse": {7}, "meta": {"tags": frozenset({"a"})}}
    write_raw(m.path, pickle.dumps(state, protocol=2))
    n = make(tmp_path)
    assert n.load() and n.sparse == {7} and n.meta["tags"] == frozenset({"a"})


def test_group_writable_file_refused(tmp_path):
    """A checkpoint writable by group or others is refused, and the message names the path."""
    m = filled(tmp_path)
    m.save()
    os.chmod(m.path, 0o620)
    with pytest.raises(CheckpointError, match=re.escape(str(m.path))):
        make(tmp_path).load()


def test_foreign_owner_refused(tmp_path, monkeypatch):
    """A checkpoint owned by another user is refused."""
    m = filled(tmp_path)
    m.save()
    monkeypatch.setattr(cp.os, "getuid", lambda: os.stat(m.path).st_uid + 1)
    with pytest.raises(CheckpointError, match="owned by"):
        make(tmp_path).load()


@pytest.mark.parametrize("payload", [
    b"", b"not a pickle at all", pickle.dumps({"version": FORMAT_VERSION})[:-3], b"\x80\x05\x95garbage",
])
def test_corrupt_bytes_raise_checkpoint_error(tmp_path, payload):
    """Truncated or random bytes raise CheckpointError, nothing else."""
    write_raw(checkpoint_path("default", tmp_path / "ckpt"), payload)
    with pytest.raises(CheckpointError):
        make(tmp_path).load()


@pytest.mark.parametrize("change", [
    {"version": FORMAT_VERSION + 1}, {"watermark": "7"}, {"sparse": [1.5]},
    {"input_position": (1, 2, 3)}, {"meta": []}, {"ok": True}, {"start": 5},
])
def test_wrong_version_or_shape_refused(tmp_path, change):
    """Wrong version, missing-typed or out-of-range fields raise CheckpointError."""
    m = filled(tmp_path)
    write_raw(m.path, pickle.dumps(m.to_dict() | change))
    with pytest.raises(CheckpointError):
        make(tmp_path).load()


def test_missing_field_refused(tmp_path):
    """A checkpoint without a required field raises CheckpointError naming it."""
    m = filled(tmp_path)
    state = m.to_dict()
    del state["elapsed"]
    write_raw(m.path, pickle.dumps(state))
    with pytest.raises(CheckpointError, match="elapsed"):
        make(tmp_path).load()


def test_load_folds_sparse_keys_at_watermark(tmp_path):
    """Sparse keys at or below the watermark in a file are folded in, keeping invariants."""
    m = filled(tmp_path)
    write_raw(m.path, pickle.dumps(m.to_dict() | {"watermark": 3, "sparse": [2, 3, 4, 9]}))
    n = make(tmp_path)
    n.load()
    assert (n.watermark, n.sparse) == (5, {9})


# --- module helpers ---------------------------------------------------------------------------


def test_safe_name_and_path(tmp_path):
    """Model names become filesystem-safe file names."""
    assert safe_name("deepseek-ai/DeepSeek-R1") == "deepseek-ai_DeepSeek-R1"
    assert safe_name("qwen2.5:7b") == "qwen2.5_7b"
    assert checkpoint_path("a/b", tmp_path) == tmp_path / "a_b_checkpoint.pkl"


def test_load_checkpoint_by_run_model_or_path(tmp_path):
    """load_checkpoint accepts a run or model name or a .pkl path and returns plain data."""
    directory = tmp_path / "ckpt"
    m = filled(tmp_path, name="deepseek-ai/DeepSeek-R1")
    m.save()
    by_name = load_checkpoint("deepseek-ai/DeepSeek-R1", directory)
    by_path = load_checkpoint(str(m.path))
    assert by_name == by_path
    assert by_name["processed_indices"] == {1, 2, 4, 7} and by_name["processed"] == 4
    assert (by_name["ok"], by_name["failed"], by_name["elapsed"]) == (3, 1, 1.5)
    assert by_name["path"] == m.path and by_name["meta"]["iteration"] == 2
    assert load_checkpoint("nothing", directory) is None


def test_clear_checkpoint_one_and_all(tmp_path):
    """clear_checkpoint removes one named checkpoint, or every one (plus stale temps) when None."""
    directory = tmp_path / "ckpt"
    for name in ("a", "b", "c"):
        filled(tmp_path, name=name).save()
    stale = directory / ".c_checkpoint.pkl.x1y2.tmp"
    stale.write_bytes(b"half")
    assert clear_checkpoint("a", directory) == [checkpoint_path("a", directory)]
    removed = clear_checkpoint(None, directory)
    assert sorted(p.name for p in removed) == sorted(["b_checkpoint.pkl", "c_checkpoint.pkl", stale.name])
    assert list(directory.iterdir()) == []
    assert clear_checkpoint("a", directory) == []


def test_manager_clear_removes_file(tmp_path):
    """CheckpointManager.clear() removes its file and tolerates its absence."""
    m = filled(tmp_path)
    m.save()
    m.clear()
    m.clear()
    assert not m.path.exists()


def test_list_checkpoints_reports_unreadable_without_raising(tmp_path):
    """list_checkpoints summarises good files and gives an error string for a corrupt one."""
    directory = tmp_path / "ckpt"
    filled(tmp_path, name="good").save()
    write_raw(checkpoint_path("bad", directory), b"junk")
    (directory / "unrelated.txt").write_text("x")
    bad, good = list_checkpoints(directory)
    assert bad["name"] == "bad" and "corrupt" in bad["error"] and bad["processed"] is None
    assert good["name"] == "good" and good["processed"] == 4 and good["error"] is None
    assert list_checkpoints(tmp_path / "missing") == []


def test_backup_file_naming(tmp_path, monkeypatch):
    """backup_file renames to .bak-YYYYmmdd-HHMMSS and adds a counter when that name is taken."""
    monkeypatch.setattr(cp.time, "strftime", lambda fmt: "20240102-030405")
    first = tmp_path / "out.jsonl"
    first.write_text("1")
    b1 = backup_file(first)
    first.write_text("2")
    b2 = backup_file(first)
    assert b1.name == "out.jsonl.bak-20240102-030405"
    assert b2.name == "out.jsonl.bak-20240102-030405-1"
    assert not first.exists() and b2.read_text() == "2"


def test_backup_file_real_timestamp(tmp_path):
    """Without patching, the suffix has the documented timestamp shape."""
    f = tmp_path / "x.pkl"
    f.write_text("x")
    assert re.fullmatch(r"x\.pkl\.bak-\d{8}-\d{6}", backup_file(f).name)


# --- input fingerprint ----------------------------------------------------------------------


@pytest.fixture
def big_input(tmp_path):
    path = tmp_path / "in.jsonl"
    line = b'{"prompt": "hello world"}\n'
    path.write_bytes(line * 100_000)          # ~2.6 MB: head and tail windows do not overlap
    return path


def test_fingerprint_unchanged_and_appended(big_input):
    """An untouched file is unchanged; rows appended after it (follow mode) are not a change."""
    fp = fingerprint_input(big_input)
    assert set(fp) >= {"size", "mtime", "head_sha256", "tail_sha256"}
    assert input_unchanged(fp, big_input)
    with open(big_input, "ab") as fh:
        fh.write(b'{"prompt": "new"}\n')
    assert input_unchanged(fp, big_input)


def test_fingerprint_modified_head(big_input):
    """A change in the first MiB is detected."""
    fp = fingerprint_input(big_input)
    with open(big_input, "r+b") as fh:
        fh.seek(10)
        fh.write(b"X")
    assert not input_unchanged(fp, big_input)


def test_fingerprint_modified_tail_window(big_input):
    """A change just before the recorded size is detected."""
    fp = fingerprint_input(big_input)
    with open(big_input, "r+b") as fh:
        fh.seek(fp["size"] - 5)
        fh.write(b"X")
    assert not input_unchanged(fp, big_input)


def test_fingerprint_truncated_or_missing(big_input):
    """A shorter or deleted file is a change."""
    fp = fingerprint_input(big_input)
    with open(big_input, "r+b") as fh:
        fh.truncate(fp["size"] - 1)
    assert not input_unchanged(fp, big_input)
    big_input.unlink()
    assert not input_unchanged(fp, big_input)


def test_fingerprint_modified_middle(big_input):
    """A change anywhere, also between the head and tail windows, is detected (whole-file hash)."""
    fp = fingerprint_input(big_input)
    with open(big_input, "r+b") as fh:
        fh.seek(fp["size"] // 2)
        fh.write(b"X")
    assert not input_unchanged(fp, big_input)


def test_fingerprint_small_and_empty_files(tmp_path):
    """Files smaller than the windows (and empty files) fingerprint and compare correctly."""
    path = tmp_path / "small.jsonl"
    path.write_bytes(b"")
    fp = fingerprint_input(path)
    path.write_bytes(b"abc\n")
    assert input_unchanged(fp, path)
    fp = fingerprint_input(path)
    path.write_bytes(b"abd\nmore\n")
    assert not input_unchanged(fp, path)
    assert not input_unchanged({"bogus": 1}, path)


def test_mark_range_moves_the_watermark_in_one_step(tmp_path):
    """mark_range over the watermark jumps it and folds in sparse keys; elsewhere it marks one by one."""
    from mpdistill.state.checkpoint import CheckpointManager
    ckpt = CheckpointManager(name="r", directory=tmp_path)
    ckpt.mark_done(7)
    ckpt.mark_range(1, 7)
    assert ckpt.watermark == 8 and ckpt.sparse == set()
    ckpt.mark_range(20, 23)
    assert ckpt.watermark == 8 and ckpt.sparse == {20, 21, 22}
    assert ckpt.processed_indices == set(range(1, 8)) | {20, 21, 22}


def test_two_threads_never_see_a_done_row_as_not_done(tmp_path):
    """While a writer thread marks rows out of order, a reader thread never sees a done row as undone."""
    import threading
    m = make(tmp_path)
    n = 20_000
    order = [k for pair in zip(range(2, n + 1, 2), range(1, n, 2)) for k in pair]  # sparse, then watermark
    done_upto = [0]
    wrong: list[int] = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            seen = done_upto[0]
            for key in order[max(0, seen - 50):seen]:
                if not m.is_done(key):
                    wrong.append(key)

    reader = threading.Thread(target=read)
    reader.start()
    for i, key in enumerate(order, start=1):
        m.mark_done(key)
        done_upto[0] = i
    stop.set()
    reader.join()
    assert not wrong
    assert m.watermark == n + 1 and not m.sparse
