"""An output folder that cannot be written, a checkpoint path that is a directory: one line, exit 2."""
from __future__ import annotations

from pathlib import Path

from mpdistill.config import OutputFiles
from tests.conftest import Workdir, write_jsonl


def test_unwritable_output_folder_is_one_line_and_exit_2(tmp_path, mock_server):
    """-o under /sys ends with exit 2 and a message naming the folder, no traceback."""
    work = Workdir(tmp_path, mock_server.url)
    work.output = Path("/sys/mpdistill-test/out.jsonl")
    write_jsonl(work.input, [{"id": "a", "prompt": "x"}])
    proc = work.run(processes=1)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "/sys" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "error" in line.lower()]) == 1


def test_checkpoint_path_that_is_a_directory_is_exit_2_and_left_intact(workdir):
    """A directory where the checkpoint goes: exit 2 naming it, the directory and output untouched."""
    write_jsonl(workdir.input, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    slot = OutputFiles(workdir.output, workdir.checkpoints).checkpoint   # where the run keeps it (named after -o)
    slot.mkdir(parents=True)
    (slot / "keep.txt").write_text("mine")
    proc = workdir.run(processes=1)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and str(slot) in proc.stderr and "is a directory" in proc.stderr
    assert (slot / "keep.txt").read_text() == "mine" and not workdir.output.exists()
