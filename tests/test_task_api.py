"""The typed task API: tasks answered as validated values in process and over HTTP, with the
same answers both ways; bad task names and inputs are one-line errors; an answer that does not
validate is an error the caller sees, never a wrong object. Tiny models use a catalog with
short answers (tight_catalog); the built-in tasks' declared types are checked on a run the
synthetic-data example trains on the bundled model (shortened; marked e2e)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import needs_bundled
from serve_fixtures import make_run, serving, tight_catalog

from specialize.cli import main
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


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "space-synth" / "config.yaml"


def small_synth_example(tmp: Path) -> Path:
    """The shipped synthetic-data example, cut to two documents of one chunk each (one to
    train on, one to test on), a few steps and a short evaluation (its teacher, model, chat
    format, task catalog and filters unchanged)."""
    cfg = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    docs = tmp / "docs"
    docs.mkdir()
    for name in ("apollo-11.md", "sputnik-1-and-the-space-age.md"):
        shutil.copy(EXAMPLE.parents[1] / "space" / "docs" / name, docs / name)
    cfg["output_dir"] = str(tmp / "runs")
    cfg["synth"].update(documents=str(docs), max_new_tokens=128, validation=0.0, test=0.5)
    cfg["synth"]["chunk"].update(size=400)
    for task in cfg["synth"]["tasks"]:
        task["probability"] = 1.0
    cfg["train"].update(epochs=1, max_steps=3, eval_every=3, log_every=1)
    cfg["eval"].update(bootstrap=100, limit=4)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.e2e
@needs_bundled
def test_builtin_tasks_return_their_declared_types_on_a_synth_example_run(tmp_path):
    """A run trained by the synthetic-data example (shortened): every built-in task returns
    its declared type over HTTP, and the same value in process."""
    assert main(["run", str(small_synth_example(tmp_path)), "--no-progress"]) == 0
    run = tmp_path / "runs" / "space-synth"
    passage = (
        "The Saturn V was the three-stage rocket that sent Apollo astronauts to the Moon. "
        "It was developed by Wernher von Braun's team at the Marshall Space Flight Center."
    )
    other = "Sputnik 1 was launched by the Soviet Union on 4 October 1957."

    def ask(t: Tasks) -> dict:
        return {
            "bullets": t.extract_bullets(passage),
            "qa_pairs": t.generate_qa_pairs(passage),
            "triplets": t.extract_triplets(passage),
            "retrieval": t.find_relevant("Who developed the Saturn V?", [passage, other]),
            "rephrase": t.rephrase(passage),
            "continuation": t.continue_text(passage),
            "comparison": t.compare(passage, other),
        }

    with serving([run], max_tokens=200) as (url, _), Tasks(url, max_tokens=160) as t:
        got = ask(t)
    assert got["bullets"] and all(isinstance(b, str) for b in got["bullets"])
    assert got["qa_pairs"] and all(isinstance(p, QAPair) for p in got["qa_pairs"])
    assert got["triplets"] and all(isinstance(x, Triplet) for x in got["triplets"])
    assert isinstance(got["retrieval"], RetrievalResult)
    assert all(
        isinstance(got[k], str) and got[k] for k in ("rephrase", "continuation", "comparison")
    )
    with Tasks(run, max_tokens=160) as local:
        assert ask(local) == got
