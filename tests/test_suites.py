"""External evaluation suites: record shapes on the real data, and error paths on tiny files.

Tests on the real datasets need ../shared/data and skip without it; the error-path tests write
their own small JSONL files, so they always run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import SHARED, needs_shared

from specialize.errors import SpecializeError
from specialize.evaluate.suites import (
    ENV_VAR,
    LETTERS,
    SUITES,
    load_suite,
    load_suite_with_report,
)

# Records per suite on the full data, and what each suite skips (see SOURCE.md notes).
EXPECTED = {
    "squad_space": (1204, {}),
    "astro_qa_mcq": (1710, {"multi-select answer": 142, "empty option": 4}),
    "astro_qa_tf": (317, {}),
    "astro_qa_open": (554, {}),
    "mmlu_astronomy": (152, {}),
    "gsm8k": (1319, {}),
}


@pytest.fixture
def default_dir(monkeypatch):
    """Load from the default ../shared/data, whatever the environment says."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def check_record(rec: dict, name: str) -> None:
    spec = SUITES[name]
    assert isinstance(rec["id"], str) and rec["id"]
    assert rec["task"] == spec.task
    roles = [m["role"] for m in rec["messages"]]
    assert roles == ["system", "user", "assistant"]
    assert rec["messages"][0]["content"] == spec.system_prompt
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in rec["messages"])
    user, ref = rec["messages"][1]["content"], rec["messages"][2]["content"]
    if spec.task == "qa":
        assert isinstance(rec["answers"], list) and ref not in rec["answers"]
        assert len(set(rec["answers"])) == len(rec["answers"])
        if "context" in rec:
            assert user.startswith("Answer the question using the passage.")
            assert f"Passage: {rec['context']}" in user and "\n\nQuestion: " in user
            assert rec["subset"] in ("core", "peripheral") and rec["title"]
    elif spec.task == "mc":
        n = len(rec["choices"])
        assert rec["label"] in LETTERS[:n] and ref == rec["label"]
        assert user.endswith("Answer with the letter of the correct option.")
        for letter, text in zip(LETTERS, rec["choices"], strict=False):
            assert f"\n{letter}. {text}" in user
    elif spec.task == "tf":
        assert rec["label"] in ("True", "False") and ref == rec["label"]
    elif spec.task == "math":
        float(rec["answer"])  # parses as a number
        assert "," not in rec["answer"]
        assert user.endswith("\nSolve it step by step and end with '#### <number>'.")
        final = ref.rpartition("####")[2].strip().replace(",", "").replace("$", "")
        assert final == rec["answer"]
        assert "<<" not in ref
    else:
        raise AssertionError(f"unknown task {spec.task}")


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("name", sorted(SUITES))
def test_suite_sample_shapes_and_determinism(name, default_dir):
    recs = load_suite(name, limit=20)
    assert len(recs) == 20
    for rec in recs:
        check_record(rec, name)
    ids = [r["id"] for r in recs]
    assert len(set(ids)) == len(ids)
    assert load_suite(name, limit=20) == recs  # same sample, same order, same content
    assert load_suite(name, limit=20, seed=1) != recs  # another seed, another sample
    bigger = [r["id"] for r in load_suite(name, limit=40)]
    assert set(ids) <= set(bigger)  # samples are nested, so growing one never reshuffles


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("name", sorted(SUITES))
def test_suite_full_counts_and_skip_report(name, default_dir):
    recs, report = load_suite_with_report(name)
    count, skipped = EXPECTED[name]
    assert len(recs) == report["usable"] == report["returned"] == count
    assert report["skipped"] == skipped
    assert report["rows"] == count + sum(skipped.values())
    assert len({r["id"] for r in recs}) == count


@pytest.mark.shared
@needs_shared
def test_suite_specific_fields(default_dir):
    squad = load_suite("squad_space")
    first = squad[0]
    assert first["id"] == "5725b41838643c19005acb7f"
    assert first["messages"][-1]["content"] == "Project Mercury"
    assert first["answers"] == ["spacecraft", "Apollo", "Project Apollo"]  # deduplicated
    assert first["title"] == "Apollo_program" and first["subset"] == "core"

    gsm = {r["id"]: r for r in load_suite("gsm8k")}
    assert gsm["gsm8k-test-0000"]["answer"] == "18"
    assert any(r["answer"] == "1450000" for r in gsm.values())  # "1,450,000" without commas
    assert gsm["gsm8k-test-0000"]["messages"][-1]["content"].startswith(
        "Janet sells 16 - 3 - 4 = 9 duck eggs"
    )

    mcq = load_suite("astro_qa_mcq")
    assert {r["type"] for r in mcq} == {"single_choice_4", "single_choice_5", "multi_choice_4"}
    assert any(len(r["choices"]) == 5 for r in mcq)
    mmlu = load_suite("mmlu_astronomy")
    assert all(len(r["choices"]) == 4 and r["subject"] == "astronomy" for r in mmlu)


@pytest.mark.shared
@needs_shared
def test_system_prompt_override_and_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(SHARED))
    plain = load_suite("astro_qa_tf", limit=3, system_prompt="")
    assert [m["role"] for m in plain[0]["messages"]] == ["user", "assistant"]
    custom = load_suite("astro_qa_tf", limit=3, system_prompt="Be terse.")
    assert custom[0]["messages"][0] == {"role": "system", "content": "Be terse."}
    # An explicit data_dir wins over the environment variable.
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    assert len(load_suite("astro_qa_tf", data_dir=SHARED, limit=3)) == 3


# ------------------------------------------------------------------ error paths on tiny files


def write_jsonl(root: Path, rel: str, lines: list[str | dict]) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    text = [x if isinstance(x, str) else json.dumps(x) for x in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def mmlu_row(i: int, **over) -> dict:
    row = {
        "id": f"m{i}",
        "question": f"Question {i}?",
        "choices": ["a", "b", "c", "d"],
        "answer_index": 1,
        "answer": "B",
    }
    row.update(over)
    return row


MMLU = "mmlu_astronomy/mmlu_astronomy_test.jsonl"


def test_malformed_json_names_file_and_line(tmp_path, monkeypatch):
    write_jsonl(tmp_path, MMLU, [mmlu_row(0), "{not json", mmlu_row(2)])
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(SpecializeError) as err:
        load_suite("mmlu_astronomy")
    msg = str(err.value)
    assert "mmlu_astronomy_test.jsonl:2" in msg and "not valid JSON" in msg
    assert "\n" not in msg


def test_missing_field_names_field(tmp_path):
    row = mmlu_row(1)
    del row["question"]
    write_jsonl(tmp_path, MMLU, [mmlu_row(0), row])
    with pytest.raises(SpecializeError, match=r"mmlu_astronomy_test\.jsonl:2 field 'question'"):
        load_suite("mmlu_astronomy", data_dir=tmp_path)


def test_mc_answer_not_among_options_is_an_error(tmp_path):
    write_jsonl(tmp_path, MMLU, [mmlu_row(0, answer="F", answer_index=None)])
    with pytest.raises(SpecializeError, match=r":1 field 'answer'.*not among the options A-D"):
        load_suite("mmlu_astronomy", data_dir=tmp_path)
    write_jsonl(tmp_path, MMLU, [mmlu_row(0, answer_index=3)])
    with pytest.raises(SpecializeError, match=r"field 'answer_index'.*disagrees"):
        load_suite("mmlu_astronomy", data_dir=tmp_path)


def test_dataset_quirks_are_skipped_counted_and_logged(tmp_path, caplog):
    write_jsonl(
        tmp_path,
        "astro_qa_en/astro_qa_en_mcq.jsonl",
        [
            {"id": "ok", "type": "single_choice_4", "question": "Q?",
             "choices": {"A": "1", "B": "2", "C": "3", "D": "4"}, "answer": "C"},
            {"id": "three", "type": "single_choice_4", "question": "Q?",
             "choices": {"A": "1", "B": "2", "C": "3"}, "answer": "C"},
            {"id": "multi", "type": "multi_choice_4", "question": "Q?",
             "choices": {"A": "1", "B": "2", "C": "3", "D": "4"}, "answer": "BD"},
            {"id": "none", "type": "single_choice_4", "question": "Q?",
             "choices": {"A": "1", "B": "2", "C": "3", "D": None}, "answer": "A"},
        ],
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="specialize"):
        recs, report = load_suite_with_report("astro_qa_mcq", data_dir=tmp_path)
    assert [r["id"] for r in recs] == ["ok"]
    assert recs[0]["choices"] == ["1", "2", "3", "4"] and recs[0]["label"] == "C"
    assert report["skipped"] == {
        "wrong number of options": 1,
        "multi-select answer": 1,
        "empty option": 1,
    }
    assert "skipped 3 of 4 items" in caplog.text


def test_missing_data_dir_says_what_is_needed(tmp_path, monkeypatch):
    missing = tmp_path / "no-shared-data"
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(SpecializeError) as err:
        load_suite("gsm8k")
    assert str(missing) in str(err.value) and "../shared/data" in str(err.value)


def test_missing_file_in_existing_dir_names_the_file(tmp_path):
    with pytest.raises(SpecializeError, match=r"gsm8k_test\.jsonl.*not found"):
        load_suite("gsm8k", data_dir=tmp_path)


def test_unknown_suite_lists_known_ones():
    with pytest.raises(SpecializeError) as err:
        load_suite("mmlu_physics")
    assert "mmlu_physics" in str(err.value)
    assert all(name in str(err.value) for name in SUITES)


def test_gsm8k_and_tf_field_errors(tmp_path):
    gsm = "gsm8k_test/gsm8k_test.jsonl"
    write_jsonl(tmp_path, gsm, [{"id": "g0", "question": "1+1?", "answer": "It is 2."}])
    with pytest.raises(SpecializeError, match=r"gsm8k_test\.jsonl:1 field 'answer'.*####"):
        load_suite("gsm8k", data_dir=tmp_path)
    write_jsonl(tmp_path, gsm, [{"id": "g0", "question": "1+1?", "answer": "1+1=2\n#### two"}])
    with pytest.raises(SpecializeError, match="not a number"):
        load_suite("gsm8k", data_dir=tmp_path)
    write_jsonl(tmp_path, gsm, [{"question": "Sum?", "answer": "<<1000+234=1234>>\n#### $1,234"}])
    (rec,) = load_suite("gsm8k", data_dir=tmp_path)
    assert rec["answer"] == "1234" and rec["id"] == "gsm8k_test:1"  # file + line when no id
    assert "<<" not in rec["messages"][-1]["content"]

    tf = "astro_qa_en/astro_qa_en_true_false.jsonl"
    write_jsonl(tmp_path, tf, [{"id": "t0", "question": "The Sun is a star.", "answer": "yes"}])
    with pytest.raises(SpecializeError, match=r"true_false\.jsonl:1 field 'answer'"):
        load_suite("astro_qa_tf", data_dir=tmp_path)


def test_duplicate_ids_and_bad_limit(tmp_path):
    write_jsonl(tmp_path, MMLU, [mmlu_row(0), mmlu_row(0)])
    with pytest.raises(SpecializeError, match=r":2 field 'id'.*duplicate id 'm0'"):
        load_suite("mmlu_astronomy", data_dir=tmp_path)
    write_jsonl(tmp_path, MMLU, [mmlu_row(i) for i in range(30)])
    with pytest.raises(SpecializeError, match="field 'limit'"):
        load_suite("mmlu_astronomy", data_dir=tmp_path, limit=0)
    few = load_suite("mmlu_astronomy", data_dir=tmp_path, limit=10, seed=3)
    order = [int(r["id"][1:]) for r in few]
    assert len(few) == 10 and order == sorted(order)  # sampled, then kept in file order
    assert few == load_suite("mmlu_astronomy", data_dir=tmp_path, limit=10, seed=3)
