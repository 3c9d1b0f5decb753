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
