"""A base URL with credentials in it: the run works and the credentials reach no file it writes."""
from __future__ import annotations

import json

from tests.conftest import Workdir, write_jsonl

PASSWORD = "sk-" + "userinfo" + "5a4b3c2d1e0f9988"   # built at run time: no key-shaped literal in the repository


def test_credentials_in_the_base_url_are_redacted_in_status_summary_and_logs(tmp_path, mock_server):
    """status file, summary, log file, outputs and stderr show the URL masked, never the password."""
    url = mock_server.url.replace("http://", f"http://alice:{PASSWORD}@")
    work = Workdir(tmp_path, url)
    write_jsonl(work.input, [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(3)] +
                [{"id": "bad", "prompt": "[[fail:400:*]] x"}])
    proc = work.run(processes=2)
    assert proc.returncode == 3, proc.stderr
    assert len(work.results()) == 3
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".log")]
    assert any(p.name.endswith("_status.json") for p in written) and work.summary in written
    for path in written:
        assert PASSWORD not in path.read_text(errors="replace"), path
    assert PASSWORD not in proc.stderr + proc.stdout
    (endpoint,) = json.loads(work.summary.read_text())["endpoints"]
    assert endpoint["base_url"].startswith("http://alice:sk-…9988@127.0.0.1:")
