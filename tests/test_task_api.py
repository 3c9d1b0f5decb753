"""The typed task API: tasks answered as validated values in process and over HTTP, with the
same answers both ways; bad task names and inputs are one-line errors; an answer that does not
validate is an error the caller sees, never a wrong object. Tiny models use a catalog with
short answers (tight_catalog); the built-in tasks' declared types are checked on the bundled
model (marked e2e)."""

from __future__ import annotations

import json

import pytest
from conftest import needs_bundled
from serve_fixtures import make_run, serving, tight_catalog

from specialize.client import QAPair, RetrievalResult, Tasks, Triplet
from specialize.errors import SpecializeError
from specialize.serve.task_api import TaskFailed

P = "The Rhine flows north. It is long."
Q = "Which river flows north?"
PASSAGES = [P, "Mars is red."]


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("tasks") / "rhine", tiny_llama, 3, tight_catalog())


def call_tight(t: Tasks) -> dict:
    return {
        "keyword": t.call("keyword", passage=P),
        "pick": t.call("pick", question=Q, passages=PASSAGES),
        "same": t.call("same", passage_a=P, passage_b="Mars is red."),
        "continuation": t.continue_text(P),
    }


def test_tasks_are_typed_and_the_same_in_process_and_over_http(run):
    with Tasks(run, max_tokens=64) as local:
        here = call_tight(local)
    assert isinstance(here["keyword"], str) and 1 <= len(here["keyword"]) <= 6  # unwrapped
    assert set(here["pick"]) == {"index"} and 0 <= here["pick"]["index"] <= 3
    assert isinstance(here["continuation"], str) and here["continuation"]
    with serving([run], max_tokens=200) as (url, _), Tasks(url, max_tokens=64) as remote:
        there = call_tight(remote)
    assert there == here


def test_bad_names_inputs_and_invalid_answers(run):
    with serving([run], max_tokens=200) as (url, _), Tasks(url, max_tokens=64) as t:
        with pytest.raises(SpecializeError, match="no task 'summarise'"):
            t.call("summarise", passage=P)
        with pytest.raises(SpecializeError, match="needs question and passages"):
            t.call("pick", passage=P)
        with pytest.raises(SpecializeError, match="text"):
            t.call("keyword", text=P)
        t.max_tokens, t.retries = 2, 1  # a JSON answer cut short never comes back as an object
        with pytest.raises(TaskFailed, match="cut by max_tokens"):
            t.call("keyword", passage=P)


def test_task_cli_prints_the_typed_answer(run, capsys):
    from specialize.cli import main

    assert main(["task", str(run), "keyword", "--input", P, "--max-tokens", "64"]) == 0
    word = json.loads(capsys.readouterr().out)
    assert isinstance(word, str) and 1 <= len(word) <= 6
    args = json.dumps({"question": Q, "passages": PASSAGES})
    assert main(["task", str(run), "pick", "--input", args, "--max-tokens", "64"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"index"}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["nope", "--input", P], "no task 'nope'"),
        (["pick", "--input", P], "give --input as a JSON object"),
        (["keyword", "--input", "{bad"], "not JSON"),
        (["keyword", "--input", '{"text": "x"}'], "--input"),
        (["keyword", "--input", "@/nonexistent/file.json"], "cannot read --input"),
    ],
)
def test_task_cli_bad_input_is_one_line_exit_2(run, capsys, args, match):
    from specialize.cli import main

    assert main(["task", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


@pytest.mark.e2e
@needs_bundled
def test_builtin_tasks_return_their_declared_types_on_the_bundled_model(tmp_path):
    """Every built-in task over HTTP on the bundled model (an untrained adapter: the base
    model's own answers, decoded under each schema), and in process equal for one of them."""
    run = make_run(tmp_path / "smol", "bundled:smollm2-135m-instruct", 0, zero_adapter=True)
    passage = (
        "The Saturn V was the three-stage rocket that sent Apollo astronauts to the Moon. "
        "It was developed by Wernher von Braun's team at the Marshall Space Flight Center."
    )
    other = "Sputnik 1 was launched by the Soviet Union on 4 October 1957."
    with serving([run], max_tokens=200) as (url, _), Tasks(url, max_tokens=160) as t:
        got = {
            "bullets": t.extract_bullets(passage),
            "qa_pairs": t.generate_qa_pairs(passage),
            "triplets": t.extract_triplets(passage),
            "retrieval": t.find_relevant("Who developed the Saturn V?", [passage, other]),
            "rephrase": t.rephrase(passage),
            "continuation": t.continue_text(passage),
            "comparison": t.compare(passage, other),
        }
    assert got["bullets"] and all(isinstance(b, str) for b in got["bullets"])
    assert got["qa_pairs"] and all(isinstance(p, QAPair) for p in got["qa_pairs"])
    assert got["triplets"] and all(isinstance(x, Triplet) for x in got["triplets"])
    assert isinstance(got["retrieval"], RetrievalResult)
    assert all(
        isinstance(got[k], str) and got[k] for k in ("rephrase", "continuation", "comparison")
    )
    with Tasks(run, max_tokens=160) as local:
        assert local.extract_triplets(passage) == got["triplets"]
