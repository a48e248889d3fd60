"""Paths a run cannot write are one ConfigError naming the path, before anything on disk changes."""
from __future__ import annotations

import os

import pytest

from mpdistill.errors import ConfigError
from mpdistill.state.writable import check_file, check_folder, check_run_paths


def test_a_folder_under_sys_cannot_be_written():
    """/sys refuses new files even to root: the folder is named with the reason."""
    with pytest.raises(ConfigError, match="cannot write the output folder /sys"):
        check_folder("/sys", "output")


def test_a_file_where_the_folder_should_be_is_named(tmp_path):
    """`-o notes.txt/out.jsonl` names the file standing where a folder is needed."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"notes.txt is not a folder"):
        check_run_paths([tmp_path / "notes.txt" / "out.jsonl"], [], tmp_path / "ck")


def test_a_checkpoint_path_that_is_a_directory_is_refused_and_left_alone(tmp_path):
    """A directory in the checkpoint's place is an error; it and its content stay as they were."""
    slot = tmp_path / "run_checkpoint.pkl"
    slot.mkdir()
    (slot / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="checkpoint path .*run_checkpoint.pkl is a directory"):
        check_file(slot, "checkpoint")
    assert (slot / "keep.txt").read_text() == "mine"


def test_writable_paths_pass_and_leave_no_probe_behind(tmp_path):
    """A writable layout passes; the probe file used to test the folder is gone afterwards."""
    out = tmp_path / "out" / "results.jsonl"
    check_run_paths([out], [tmp_path / "out" / "results.errors.jsonl"], tmp_path / "ck")
    assert os.listdir(tmp_path / "out") == [] and os.listdir(tmp_path / "ck") == []
