"""Readers, splits and the leakage check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import conversation

from specialize.config import SplitConfig
from specialize.data.leakage import find_leaks
from specialize.data.read import read_records
from specialize.data.split import assign_splits
from specialize.errors import SpecializeError


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_chat_jsonl_keeps_metadata(tmp_path):
    p = jsonl(tmp_path / "a.jsonl", [{"id": "x", "messages": conversation(), "topic": "orbits"}])
    recs, stats = read_records(p)
    assert recs[0]["id"] == "x" and recs[0]["topic"] == "orbits"
    assert stats.files == {"a.jsonl": 1}


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("{not json", r"a\.jsonl:2: not valid JSON"),
        ({"messages": conversation()[:2]}, r"a\.jsonl:2 field 'messages': record has no assistant"),
        ({"messages": conversation(a="  ")}, r"a\.jsonl:2 field 'messages\[2\]\.content': empty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"unknown role 'robot'"),
        ({"messages": conversation() + [{"role": "user", "content": "more?"}]}, "must be the"),
    ],
)
def test_bad_chat_records_name_file_line_field(tmp_path, row, match):
    p = jsonl(tmp_path / "a.jsonl", [{"messages": conversation()}, row])
    with pytest.raises(SpecializeError, match=match):
        read_records(p)


def test_csv_column_mapping_counts_and_removes_empty_rows(tmp_path):
    p = tmp_path / "math.csv"
    p.write_text('problem,solution\n"2+2?",4\n"empty answer",\n,"no question"\n"3*3?","9"\n')
    recs, stats = read_records(
        p, columns={"prompt": "problem", "response": "solution"}, system_prompt="Solve."
    )
    assert [r["messages"][1]["content"] for r in recs] == ["2+2?", "3*3?"]
    assert recs[0]["messages"][0] == {"role": "system", "content": "Solve."}
    assert stats.removed_empty == 2 and stats.removed_rows == ["math.csv:3", "math.csv:4"]


def test_csv_missing_column_is_clear(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("question,answer\nq,a\n")
    with pytest.raises(
        SpecializeError,
        match=r"m\.csv:2 field 'data\.columns\.prompt': column "
        r"'prompt' not found",
    ):
        read_records(p)


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a?", "b?"], "response": ["A", "B"], "level": [1, 2]}), p)
    recs, _ = read_records(p)
    assert [r["messages"][-1]["content"] for r in recs] == ["A", "B"]
    assert recs[1]["level"] == 2 and recs[1]["id"] == "d-2"


def test_missing_path_and_duplicate_ids(tmp_path):
    with pytest.raises(SpecializeError, match="data file not found"):
        read_records(tmp_path / "none.jsonl")
    p = jsonl(tmp_path / "a.jsonl", [{"id": 1, "messages": conversation()}] * 2)
    with pytest.raises(SpecializeError, match=r"a\.jsonl:2 field 'id': duplicate id '1'"):
        read_records(p)


def records(n: int, **meta) -> list[dict]:
    return [{"id": f"r{i}", "messages": conversation(f"q{i}?", f"a{i}"), **meta} for i in range(n)]


def test_seeded_95_5_split_is_deterministic_and_order_free():
    recs = records(2000)
    a = assign_splits(recs, SplitConfig())
    b = assign_splits(list(reversed(recs)), SplitConfig())
    assert {r["id"] for r in a["validation"]} == {r["id"] for r in b["validation"]}
    assert 0.04 < len(a["validation"]) / 2000 < 0.06 and not a["test"]
    c = assign_splits(recs, SplitConfig(seed=18))
    assert {r["id"] for r in c["validation"]} != {r["id"] for r in a["validation"]}


def test_chains_stay_together_and_references_are_pinned():
    recs = records(300)
    for r in recs[:30]:
        r["chain_id"] = f"c{int(r['id'][1:]) // 3}"
    recs.append(
        {
            "id": "para",
            "messages": conversation("other?", "a5"),
            "kind": "paraphrase",
            "paraphrase_of": "r5",
        }
    )
    cfg = SplitConfig(
        validation=0.3,
        test=0.3,
        pin_referenced={"paraphrase_of": "train"},
        rules=[{"where": {"kind": "paraphrase"}, "split": "test"}],
    )
    out = assign_splits(recs, cfg)
    where = {r["id"]: s for s, rs in out.items() for r in rs}
    assert where["para"] == "test" and where["r5"] == "train"
    for c in range(10):
        assert len({where[f"r{3 * c + k}"] for k in range(3)}) == 1


def test_record_split_field_wins_and_is_validated():
    recs = records(5)
    recs[0]["split"] = "test"
    assert [r["id"] for r in assign_splits(recs, SplitConfig())["test"]] == ["r0"]
    recs[1]["split"] = "dev"
    with pytest.raises(SpecializeError, match="split='dev'"):
        assign_splits(recs, SplitConfig())


def test_leakage_finds_exact_and_near_duplicates_but_not_paraphrases():
    def rec(i, q, a):
        return {"id": i, "messages": conversation(q, a)}

    splits = {
        "train": [
            rec(
                "t1",
                "At what altitude is a geostationary orbit above the equator?",
                "About 35,786 km.",
            ),
            rec("t2", "Which isotope fuels most radioisotope generators?", "Plutonium-238."),
        ],
        "validation": [],
        "test": [
            rec(
                "x1",
                "At what altitude is a geostationary orbit above the equator?",
                "about 35,786 km",
            ),  # exact after normalisation
            rec(
                "x2", "Which isotope fuels most of the radioisotope generators?", "Plutonium-238."
            ),  # one word added: near
            rec(
                "x3",
                "How high over the equator do geostationary satellites sit?",
                "About 35,786 km.",
            ),  # a real paraphrase: allowed
        ],
    }
    leaks = find_leaks(splits, 0.8)
    kinds = {(x.a_id, x.b_id): x.kind for x in leaks}
    assert kinds == {("t1", "x1"): "exact", ("t2", "x2"): "near"}


# ------------------------------------------------------------- inputs that used to break readers


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


GOOD_ROW = json.dumps({"messages": conversation()})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        # each of these raised a traceback before (UnicodeDecodeError, RecursionError, ValueError)
        (bytes(range(256)), r"a\.jsonl:1: NUL byte at byte 1 of the line"),
        (
            GOOD_ROW.encode() + b'\n{"id": "caf\xe9"}\n',
            r"a\.jsonl:2: not valid UTF-8 at byte 12 of the line \(0xe9\)",
        ),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", r"a\.jsonl:1: not valid JSON \(nested deeper"),
        (
            b'{"messages": ' + b"[" * 200 + b"]" * 200 + b"}\n",
            r"a\.jsonl:1 field 'messages(\[0\])+",
        ),
        (b'{"n": ' + b"9" * 5000 + b"}\n", r"a\.jsonl:1: not valid JSON \(an integer with 5,000"),
        (b'{"n": -Infinity}\n', r"a\.jsonl:1: not valid JSON \(-Infinity is not a JSON number\)"),
        (GOOD_ROW.replace("Low", "\\udc00").encode() + b"\n", r"'messages\[2\]\.content': lone su"),
        ("\ufeff{}".encode("utf-16"), r"a\.jsonl:1: the file is UTF-16"),
        (b"[1, 2]\n", r"a\.jsonl:1: a record must be a JSON object, got a list"),
        (b'"text"\n', r"a record must be a JSON object, got the string 'text'"),
        (b"{oops\n", r"a\.jsonl:1: not valid JSON \(Expecting property name .* at column 2\)"),
    ],
)
def test_jsonl_that_used_to_raise_tracebacks(tmp_path, data, match):
    with pytest.raises(SpecializeError, match=match):
        read_records(write_bytes(tmp_path / "a.jsonl", data))


def test_jsonl_bom_crlf_and_nan(tmp_path):
    rows = [{"id": "a", "messages": conversation()}, {"id": "b", "messages": conversation("q2")}]
    text = "\r\n".join(json.dumps(r) for r in rows).replace('"id": "b"', '"id": "b", "w": NaN')
    recs, _ = read_records(write_bytes(tmp_path / "a.jsonl", b"\xef\xbb\xbf" + text.encode()))
    assert [r["id"] for r in recs] == ["a", "b"] and recs[1]["w"] is None


def test_openai_content_parts_are_joined(tmp_path):
    msgs = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Two?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
    ]
    recs, _ = read_records(jsonl(tmp_path / "a.jsonl", [{"messages": msgs}]))
    assert recs[0]["messages"] == [
        {"role": "user", "content": "Part one.\nTwo?"},
        {"role": "assistant", "content": "Yes."},
    ]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            [{"type": "image_url", "image_url": {"url": "x.png"}}],
            r"a\.jsonl:1 field 'messages\[1\]\.content\[0\]\.type': only text content parts can "
            r"be trained on, got type 'image_url'",
        ),
        ([{"type": "text", "text": 3}], r"field 'messages\[1\]\.content\[0\]\.text': a text part"),
        (["plain"], r"field 'messages\[1\]\.content\[0\]': a content part must be an object"),
        (None, r"field 'messages\[1\]\.content': content must be a string or a list of text parts"),
    ],
)
def test_non_text_content_parts_name_the_field(tmp_path, content, match):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    msgs[1]["content"] = content
    with pytest.raises(SpecializeError, match=match):
        read_records(jsonl(tmp_path / "a.jsonl", [{"messages": msgs}]))


def test_huge_line_is_refused_not_read_forever(tmp_path, monkeypatch):
    import specialize.io

    monkeypatch.setattr(specialize.io, "MAX_LINE_CHARS", 1000)
    p = write_bytes(tmp_path / "a.jsonl", GOOD_ROW.encode() + b"\n" + b"x" * 5000)
    with pytest.raises(SpecializeError, match=r"a\.jsonl:2: line is longer than 1,000 characters"):
        read_records(p)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"prompt,response\na,b,c\n", r"m\.csv:2: row has 3 fields, the header \(line 1\) has 2"),
        (b"prompt,response\nonly\n", r"m\.csv:2: row has 1 field, the header \(line 1\) has 2"),
        (b"prompt,response\na\x00b,c\n", r"m\.csv:2: NUL byte at byte 2 of the line"),
        (b"prompt,response\n\xff,c\n", r"m\.csv:2: not valid UTF-8 at byte 1 of the line \(0xff\)"),
        (b"prompt,prompt,response\na,b,c\n", r"m\.csv:1: column 'prompt' appears twice"),
        (b"\n\n", r"m\.csv:1: CSV file has no header row"),
    ],
)
def test_bad_csv_names_the_line(tmp_path, data, match):
    with pytest.raises(SpecializeError, match=match):
        read_records(write_bytes(tmp_path / "m.csv", data))


def test_csv_bom_crlf_and_long_fields(tmp_path):
    long = "x" * 300_000  # beyond the csv module's default 128 KiB field limit
    data = f'\ufeffprompt,response\r\n"two\r\nlines",{long}\r\nq,a\r\n'.encode()
    recs, _ = read_records(write_bytes(tmp_path / "m.csv", data))
    assert recs[0]["messages"][0]["content"] == "two\r\nlines"
    assert recs[0]["messages"][1]["content"] == long and recs[1]["id"] == "m-4"


def test_corrupt_and_truncated_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a?"], "response": ["A"]}), good)
    data = good.read_bytes()
    for name, bad in [("t", data[: len(data) // 2]), ("e", b""), ("g", b"PAR1" + b"\x00" * 64)]:
        with pytest.raises(SpecializeError, match=rf"{name}\.parquet: unreadable Parquet file"):
            read_records(write_bytes(tmp_path / f"{name}.parquet", bad))


def test_parquet_columns_of_other_types_become_plain_json(tmp_path):
    import datetime as dt
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    table = {
        "prompt": pa.array([b"bytes?", b"q2"]),
        "response": pa.array([42, 7]),
        "when": pa.array([dt.datetime(2024, 1, 2, 3, 4), None]),
        "price": pa.array([Decimal("1.50"), Decimal("2.25")]),
        "score": pa.array([float("nan"), 0.5]),
        "tags": pa.array([["a"], []]),
    }
    pq.write_table(pa.table(table), p)
    recs, _ = read_records(p)
    assert recs[0]["messages"][-2:] == [
        {"role": "user", "content": "bytes?"},
        {"role": "assistant", "content": "42"},
    ]
    assert recs[0]["when"] == "2024-01-02T03:04:00" and recs[0]["price"] == 1.5
    assert recs[0]["score"] is None and recs[0]["tags"] == ["a"]
    json.dumps(recs, allow_nan=False)
    pq.write_table(pa.table({"prompt": [["a", "list"]], "response": ["r"]}), p)
    with pytest.raises(
        SpecializeError, match=r"d\.parquet:1 field 'prompt': expected text, got a list"
    ):
        read_records(p)
    pq.write_table(pa.table({"prompt": pa.array([b"\xff"]), "response": ["r"]}), p)
    with pytest.raises(SpecializeError, match=r"d\.parquet:1 field 'prompt': binary value that"):
        read_records(p)


def test_error_messages_are_printable_one_liners(tmp_path):
    # A role holding a NUL escape and a newline: the message shows escapes, never the raw bytes.
    row = {
        "messages": [
            {"role": "us\u0000er\nx", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    with pytest.raises(SpecializeError) as e:
        read_records(jsonl(tmp_path / "a.jsonl", [row]))
    msg = str(e.value)
    assert msg.isprintable() and "unknown role 'us\\x00er x'" in msg


def test_pin_referenced_takes_a_list_of_ids_and_refuses_other_shapes():
    recs = [
        {"id": "a", "messages": conversation("q1", "a1")},
        {"id": "b", "messages": conversation("q2", "a2")},
        {"id": "p", "messages": conversation("q3", "a1"), "paraphrase_of": ["a", "b"]},
    ]
    cfg = SplitConfig(pin_referenced={"paraphrase_of": "train"}, test=0.9, validation=0.0)
    splits = assign_splits(recs, cfg)
    assert {r["id"] for r in splits["train"]} >= {"a", "b"}
    for bad in ({"x": 1}, [["a"]], 1.5):
        recs[2]["paraphrase_of"] = bad
        with pytest.raises(SpecializeError, match="expected a record id"):
            assign_splits(recs, cfg)
