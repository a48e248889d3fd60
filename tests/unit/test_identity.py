"""The one row-id rule: explicit ids as JSON values, line numbers in their own namespace, read back alike."""
from __future__ import annotations

import json

from mpdistill.inputs.jsonl import JsonlSource

from mpdistill.inputs.rows import IdSet, Row, row_from_object
from mpdistill.outputs import identity
from mpdistill.outputs.batch import error_to_batch_output, to_batch_output
from mpdistill.outputs.records import bad_row_record
from mpdistill.inputs.rows import BadRow


def test_explicit_id_never_collides_with_a_line_number():
    """`"id": "7"` and `7` and line 7 are three different rows."""
    keys = {identity.identity({"id": "7"}, 3), identity.identity({"id": 7}, 3), identity.identity({}, 7)}
    assert len(keys) == 3
    assert identity.identity({}, 7) == identity.line_key(7) == "#7"


def test_id_then_custom_id_then_line_number():
    """`id` wins, then `custom_id`; null or empty counts as no id; a non-object line has its line number."""
    assert identity.identity({"id": "a", "custom_id": "b"}, 1) == '"a"'
    assert identity.identity({"id": "", "custom_id": "b"}, 1) == '"b"'
    assert identity.identity({"id": None, "custom_id": ""}, 4) == "#4"
    assert identity.identity(None, 9) == "#9"
    assert identity.identity([1, 2], 9) == "#9"


def test_list_and_dict_ids_stay_json_values():
    """List/dict ids are kept as values (not Python repr) and key-order does not matter."""
    row = row_from_object(1, {"id": {"b": 1, "a": [1, "x"]}, "prompt": "p"}, None)
    assert row.id == {"b": 1, "a": [1, "x"]} and not row.implied
    assert row.identity == identity.id_key({"a": [1, "x"], "b": 1})
    assert identity.shown(row.id) == '{"a":[1,"x"],"b":1}'


def test_source_rejects_only_real_duplicates(tmp_path):
    """An explicit "7" on another line is not a duplicate of line 7; a repeated id is."""
    path = tmp_path / "in.jsonl"
    lines = [{"prompt": f"p{i}"} for i in range(1, 8)] + [{"id": "7", "prompt": "x"}, {"id": "7", "prompt": "y"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = list(JsonlSource(path).rows())
    assert [type(r).__name__ for r in rows] == ["Row"] * 8 + ["BadRow"]
    assert rows[6].implied and rows[6].id == "7" and not rows[7].implied
    assert "duplicate id '7'" in rows[8].reason


def test_written_lines_read_back_to_the_same_identity():
    """Output, error and Batch lines of a row read back to the row's own identity, ids or line numbers."""
    from mpdistill.provider.answer import Completion
    from mpdistill.outputs.records import error_record, result_record
    done = Completion(answer="a", reasoning=None, finish_reason="stop", usage=None, model="m")
    for obj, line in (({"id": ["x", 1], "prompt": "p"}, 3), ({"prompt": "p"}, 5), ({"id": 7, "prompt": "p"}, 7)):
        row = row_from_object(line, obj, None)
        out = result_record(row, done, model="m", latency=0.1, attempts=1, endpoint="e")
        err = error_record(row, RuntimeError("x"), model="m", attempts=1, history=[])
        for record in (out, err, to_batch_output(out), error_to_batch_output(err)):
            assert identity.record_identity(json.loads(json.dumps(record))) == row.identity
        assert next(iter(out)) == "line"


def test_bad_row_without_id_is_known_by_its_line():
    """The error line of an unreadable row (no id at all) is known by the line it came from."""
    record = bad_row_record(BadRow(12, None, "not JSON"))
    assert identity.record_identity(record) == "#12"


def test_foreign_lines_are_known_by_id():
    """Lines other tools wrote (no `line`) are known by id/custom_id; with neither they have no identity."""
    assert identity.record_identity({"id": "a1", "answer": "x"}) == '"a1"'
    assert identity.record_identity({"custom_id": "c", "answer": "x"}) == '"c"'
    assert identity.record_identity({"answer": "x"}) is None
    assert identity.record_identity("not a dict") is None


def test_idset_tells_identities_apart():
    """The duplicate check keeps explicit ids and line numbers apart."""
    ids = IdSet()
    assert ids.add(identity.line_key(7)) and ids.add(identity.id_key("7")) and ids.add(identity.id_key(7))
    assert not ids.add(identity.id_key("7"))
    assert Row(1, "1", {}, None, (), implied=True).identity == "#1"
