"""Examples, pools, loaders and their typed errors."""
from __future__ import annotations

import json

import pytest

from icp_influence.data import (Example, Pool, add_label_noise, format_paper_text, load_alpaca,
                                load_paper_text, parse_paper_text)
from icp_influence.errors import DataFormatError, DuplicateIdError, EmptyPoolError, IcpError
from icp_influence.synthetic import make_synthetic_pool


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_load_alpaca_json_and_jsonl_agree(tmp_path):
    recs = [{"instruction": "Add.", "input": "1 + 2", "output": "3"},
            {"instruction": "Say hi.", "output": "hi", "id": "greet"}]
    pj = write(tmp_path, "a.json", json.dumps(recs))
    pl = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n\n")
    a, b = load_alpaca(pj), load_alpaca(pl)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert a.ids == ["a-0", "greet"] and a[1].input == "" and a[0].output == "3"


def test_jsonl_broken_line_reports_its_number(tmp_path):
    p = write(tmp_path, "bad.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n')
    with pytest.raises(DataFormatError, match=r"line 3 is not valid JSON"):
        load_alpaca(p)


def test_malformed_json_reports_position(tmp_path):
    with pytest.raises(DataFormatError, match=r"not valid JSON .*line 1"):
        load_alpaca(write(tmp_path, "bad.json", '[{"instruction": "a",'))


def test_missing_fields_named(tmp_path):
    with pytest.raises(DataFormatError, match=r"missing field\(s\) 'output'"):
        load_alpaca(write(tmp_path, "m.jsonl", '{"instruction": "a"}\n'))


def test_non_string_field(tmp_path):
    with pytest.raises(DataFormatError, match=r"field 'output' must be a string, got int"):
        load_alpaca(write(tmp_path, "n.jsonl", '{"instruction": "a", "output": 3}\n'))


def test_invalid_utf8(tmp_path):
    with pytest.raises(DataFormatError, match=r"invalid UTF-8 .*line 2"):
        load_alpaca(write(tmp_path, "u.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff"}\n', "wb"))


def test_empty_pool(tmp_path):
    with pytest.raises(EmptyPoolError, match="empty"):
        load_alpaca(write(tmp_path, "e.jsonl", "\n\n"))
    with pytest.raises(EmptyPoolError):
        Pool([])


def test_duplicate_ids():
    with pytest.raises(DuplicateIdError, match="'x'.*items 0 and 1"):
        Pool([Example("x", "a", output="b"), Example("x", "c", output="d")])


def test_errors_share_a_base_class():
    assert issubclass(DataFormatError, IcpError) and issubclass(EmptyPoolError, IcpError)


def test_paper_text_roundtrip(tmp_path):
    exs = [Example("p-0", "Add the numbers.", "1 + 2", "3"), Example("p-1", "Say hi.", "", "hi there")]
    text = "\n\n\n".join(format_paper_text(e) for e in exs)
    assert format_paper_text(exs[0]) == "Instruction: Add the numbers.\nInput: 1 + 2\nResponse: 3"
    pool = load_paper_text(write(tmp_path, "p.txt", text))
    assert [(e.instruction, e.input, e.output) for e in pool] == [(e.instruction, e.input, e.output) for e in exs]
    with pytest.raises(DataFormatError, match="does not follow"):
        parse_paper_text("Question: what?", id_="q")


def test_label_noise_is_recorded_and_deterministic():
    pool = make_synthetic_pool(100, seed=0)
    noisy = add_label_noise(pool, 0.1, seed=1)
    ids = noisy.noisy_ids()
    assert len(ids) == 10 and ids == add_label_noise(pool, 0.1, seed=1).noisy_ids()
    for i in ids:
        ex, clean = noisy.by_id(i), pool.by_id(i)
        assert ex.output != clean.output and ex.meta["clean_output"] == clean.output and ex.task == clean.task
    assert sum(a.output != b.output for a, b in zip(pool, noisy)) == 10


def test_pool_filters():
    pool = make_synthetic_pool(28, seed=0)
    sub = pool.filter(tasks=["addition", "plural"])
    assert len(sub) == 4 and sub.families() == ["addition", "plural"]
    assert pool.subset(["plural-0001", "addition-0000"]).ids == ["plural-0001", "addition-0000"]
