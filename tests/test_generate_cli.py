"""``specialize generate``: a bad constraint or input fails in one line before any model loads;
a tiny model answers a file under a schema with every answer valid."""

from __future__ import annotations

import json

import pytest

from specialize.cli import main


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def prompts(tmp_path):
    return write(
        tmp_path / "p.jsonl", [{"prompt": "Name an orbit."}, {"id": "b", "prompt": "Why?"}]
    )


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def no_model(*a, **k):
    raise AssertionError("a model was loaded before the input was checked")


@pytest.mark.parametrize(
    "schema,message",
    [
        ({"type": "nonsense"}, "cannot be used for constrained decoding"),
        ({"type": "string", "pattern": "(?<=a)b"}, "cannot be used for constrained decoding"),
        ([1, 2], "a JSON schema must be an object"),
    ],
)
def test_bad_schema_is_one_line_exit_2_before_any_model(
    tmp_path, prompts, capsys, monkeypatch, schema, message
):
    import specialize.infer.files as files

    monkeypatch.setattr(files, "open_backend", no_model)
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps(schema))
    out = tmp_path / "a.jsonl"
    code, err = run(
        capsys,
        "generate",
        "bundled:x",
        "--input",
        str(prompts),
        "--output",
        str(out),
        "--schema",
        str(bad),
    )
    assert code == 2 and len(err) == 1 and message in err[0] and str(bad) in err[0], err
    assert not out.exists()


def test_bad_input_line_and_regex_are_one_line(tmp_path, capsys, monkeypatch):
    import specialize.infer.files as files

    monkeypatch.setattr(files, "open_backend", no_model)
    bad = write(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"text": "no prompt"}])
    code, err = run(capsys, "generate", "m", "--input", str(bad), "--output", str(tmp_path / "o"))
    assert code == 2 and len(err) == 1 and f"{bad}:2" in err[0]
    code, err = run(
        capsys,
        "generate",
        "m",
        "--input",
        str(bad),
        "--output",
        str(tmp_path / "o"),
        "--regex",
        "(unclosed",
    )
    assert code == 2 and len(err) == 1 and "invalid regex" in err[0]


def test_tiny_model_answers_a_file_under_a_schema(tiny_llama, prompts, tmp_path, capsys):
    schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["leo", "geo"]},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 5},
                "minItems": 1,
                "maxItems": 2,
            },
        },
        "required": ["kind", "tags"],
    }
    s = tmp_path / "s.json"
    s.write_text(json.dumps(schema))
    out = tmp_path / "a.jsonl"
    code, err = run(
        capsys,
        "generate",
        str(tiny_llama),
        "--input",
        str(prompts),
        "--output",
        str(out),
        "--schema",
        str(s),
        "--max-new-tokens",
        "200",
        "--no-progress",
    )
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "b"]
    assert all(r["invalid"] is None and r["value"]["kind"] in ("leo", "geo") for r in rows), rows
    stats = json.loads((tmp_path / "a.jsonl.stats.json").read_text())
    assert stats["valid"] == 2 and stats["invalid"] == 0 and stats["requests"] == 2
