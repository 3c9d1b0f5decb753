"""No input breaks a reader: any bytes give records or one SpecializeError line (property tests).

Every reader (chat-record JSONL, prompt/response JSONL, CSV, Parquet, documents for CPT) and the
config loader are fed arbitrary bytes, mutations of valid files, and structured-but-wrong data
built with hypothesis strategies. The only outcomes allowed: records that are plain JSON data
(so the later stages can write them), or a SpecializeError whose message is one printable line
naming the file. Any other exception fails the test. Examples are bounded and derandomized, so
the file runs in seconds and the same way on every machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, write_tiny_config, write_tiny_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specialize.config import RunConfig, load_config
from specialize.data.read import ROLES, read_documents, read_records
from specialize.errors import SpecializeError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CHAT = {"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]}
SEEDS = {
    ".jsonl": [
        (json.dumps(CHAT) + "\n" + json.dumps({"id": "b", **CHAT, "topic": "x"}) + "\n").encode(),
        b'{"prompt": "2+2?", "response": "4", "text": "t"}\r\n{"prompt": "q", "response": "r"}\n',
    ],
    ".csv": [b'prompt,response,text\r\n"2+2?",4,t\r\n"multi\nline",x,y\n'],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _parquet_seed() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(
        pa.table({"prompt": ["a?", "b?"], "response": ["A", "B"], "text": ["t", "u"]}), buf
    )
    return buf.getvalue()


SEEDS[".parquet"] = [_parquet_seed()]


def mutate(data: bytes, edits: list[tuple[int, bytes, int]]) -> bytes:
    """Apply (position, inserted bytes, deleted count) edits: corrupt, truncate, splice."""
    out = bytearray(data)
    for pos, insert, delete in edits:
        at = pos % (len(out) + 1)
        out[at : at + delete] = insert
    return bytes(out)


def _mutated(suffix: str) -> st.SearchStrategy[bytes]:
    edit = st.tuples(st.integers(0, 1 << 20), st.binary(max_size=8), st.integers(0, 16))
    return st.builds(mutate, st.sampled_from(SEEDS[suffix]), st.lists(edit, max_size=4))


def check_error(e: SpecializeError, path: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and "\r" not in msg, msg
    assert path.name in msg, msg
    assert msg.isprintable(), ascii(msg)
    msg.encode("utf-8")  # printable on any UTF-8 terminal (no lone surrogates)


def check_plain(value: Any) -> None:
    """Records are plain JSON data: what write_jsonl writes and every JSON reader reads."""
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def read_all(path: Path, fmt: str = "auto") -> None:
    """Call every reader on ``path``; each returns sane records or raises SpecializeError."""
    try:
        recs, stats = read_records(path, fmt=fmt)
    except SpecializeError as e:
        check_error(e, path)
    else:
        assert recs and sum(stats.files.values()) == len(recs)
        for r in recs:
            assert isinstance(r["id"], str)
            assert r["messages"][-1]["role"] == "assistant"
            assert all(m["role"] in ROLES and isinstance(m["content"], str) for m in r["messages"])
            check_plain(r)
    try:
        docs, _ = read_documents(path, ["text"], "id")
    except SpecializeError as e:
        check_error(e, path)
    else:
        for d in docs:
            assert isinstance(d["text"], str) and d["text"] and isinstance(d["id"], str)
            check_plain(d)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------ arbitrary bytes

SUFFIXES = [".jsonl", ".csv", ".parquet", ".txt"]  # .txt: a CPT document (read_documents)


@FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(SUFFIXES))
def test_any_bytes(folder, data, suffix):
    read_all(write(folder, f"any{suffix}", data))


@FUZZ
@given(data=st.one_of(*(_mutated(s) for s in SUFFIXES[:2])), fmt=st.sampled_from(["auto", "chat"]))
def test_mutated_text_files(folder, data, fmt):
    suffix = ".csv" if data.count(b",") > data.count(b":") else ".jsonl"
    read_all(write(folder, f"mut{suffix}", data), fmt)


@FUZZ
@given(data=_mutated(".parquet"))
def test_corrupt_or_truncated_parquet(folder, data):
    read_all(write(folder, "mut.parquet", data))


# ----------------------------------------------------------- structured but wrong JSON lines

# Text with lone surrogates and control characters (hypothesis leaves surrogates out by default).
ODD_TEXT = st.text(st.characters() | st.characters(categories=["Cs", "Cc"]), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**990, max_value=10**1100)  # more digits than json will read
    | st.floats()  # NaN and Infinity become NaN / Infinity literals
    | st.text(max_size=12)
    | ODD_TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=8) | JSON}),
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio"]), "x": JSON}),
    JSON,
)
CONTENT = st.text(max_size=20) | st.lists(PART, max_size=3) | JSON
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from([*ROLES, "tool", "robot"]) | JSON, "content": CONTENT}
    ),
    JSON,
)
CHAT_ROW = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, max_size=4) | JSON},
    optional={"id": JSON, "topic": JSON, "split": JSON},
)
TABLE_ROW = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=10) | JSON,
        "response": st.text(max_size=10) | JSON,
        "text": st.text(max_size=10) | JSON,
        "id": JSON,
    },
)


def deep(n: int) -> str:
    return "[" * n + "]" * n


def _line(row: Any, ascii_only: bool) -> bytes:
    if isinstance(row, str):
        return row.encode()
    try:
        text = json.dumps(row, ensure_ascii=ascii_only)
    except ValueError:  # an integer too long for str(): write its digits by hand
        text = json.dumps(str(row))
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


@FUZZ
@given(
    rows=st.lists(
        CHAT_ROW | TABLE_ROW | JSON | st.integers(1, 3000).map(deep) | st.just("{"),
        min_size=1,
        max_size=4,
    ),
    ascii_only=st.booleans(),
    bom=st.booleans(),
    end=st.sampled_from([b"\n", b"\r\n"]),
    fmt=st.sampled_from(["auto", "chat", "prompt-response"]),
)
def test_structured_jsonl(folder, rows, ascii_only, bom, end, fmt):
    data = b"\xef\xbb\xbf" * bom + b"".join(_line(r, ascii_only) + end for r in rows)
    read_all(write(folder, "rows.jsonl", data), fmt)


@FUZZ
@given(
    header=st.lists(st.sampled_from(["prompt", "response", "text", "id", "x", ""]), max_size=4),
    rows=st.lists(st.lists(ODD_TEXT | st.text(max_size=10), max_size=5), max_size=4),
    bom=st.booleans(),
    end=st.sampled_from(["\n", "\r\n"]),
)
def test_structured_csv(folder, header, rows, bom, end):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=end)
    writer.writerows([header, *rows])
    data = ("\ufeff" * bom + buf.getvalue()).encode("utf-8", "surrogatepass")
    read_all(write(folder, "rows.csv", data))


PARQUET_VALUES = {
    "string": st.text(max_size=10),
    "int": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(),
    "bool": st.booleans(),
    "binary": st.binary(max_size=10),
    "list": st.lists(st.integers(-5, 5), max_size=3),
    "struct": st.fixed_dictionaries({"a": st.integers(-5, 5), "b": st.text(max_size=3)}),
    "date": st.dates(),
    "datetime": st.datetimes(),
    "time": st.times(),
    "timedelta": st.timedeltas(),
    "decimal": st.decimals(allow_nan=False, allow_infinity=False, places=2, max_value=10**6),
}


@st.composite
def parquet_tables(draw) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = draw(st.integers(0, 4))
    names = draw(st.lists(st.sampled_from(["prompt", "response", "text", "id", "x"]), unique=True))
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(PARQUET_VALUES)))
        values = draw(st.lists(st.none() | PARQUET_VALUES[kind], min_size=n, max_size=n))
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowException, OverflowError, ValueError, TypeError):
            columns[name] = pa.array([None] * n, pa.string())
    buf = io.BytesIO()
    pq.write_table(pa.table(columns) if columns else pa.table({"x": pa.array([], pa.int8())}), buf)
    return buf.getvalue()


@FUZZ
@given(data=parquet_tables(), fmt=st.sampled_from(["auto", "prompt-response"]))
def test_parquet_columns_of_any_type(folder, data, fmt):
    read_all(write(folder, "typed.parquet", data), fmt)


# --------------------------------------------------------------------------- config loader

SHIPPED = (ROOT / "examples" / "space" / "config.yaml").read_bytes()


def _config_keys() -> list[str]:
    from specialize.config import _ALIASES, _sections

    keys = {name for model in _sections().values() for name in model.model_fields}
    return sorted(keys | set(_ALIASES) | {"lerning_rate", "trian", "x"})


KEY = st.sampled_from(_config_keys()) | st.text(max_size=8)
YAML_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
YAML_VALUE = st.recursive(
    YAML_SCALARS,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(KEY, c, max_size=3),
    max_leaves=10,
)
CONFIG = st.dictionaries(
    st.sampled_from(["name", "mode", "output_dir", *RunConfig.model_fields]) | KEY,
    st.dictionaries(KEY, YAML_VALUE, max_size=4) | YAML_VALUE,
    max_size=5,
)


def load_all(path: Path) -> None:
    try:
        cfg = load_config(path)
    except SpecializeError as e:
        check_error(e, path)
    else:
        assert isinstance(cfg, RunConfig)


@FUZZ
@given(
    data=st.binary(max_size=2000)
    | st.builds(
        mutate,
        st.just(SHIPPED),
        st.lists(
            st.tuples(st.integers(0, 1 << 16), st.binary(max_size=8), st.integers(0, 16)),
            max_size=4,
        ),
    )
)
def test_config_any_bytes(folder, data):
    load_all(write(folder, "any.yaml", data))


@FUZZ
@given(raw=CONFIG, as_json=st.booleans(), with_data=st.booleans())
def test_config_structured_but_wrong(folder, raw, as_json, with_data):
    import yaml

    if with_data:
        raw = {"data": {"path": "x.jsonl"}, **raw}
    try:
        text = json.dumps(raw) if as_json else yaml.safe_dump(raw, allow_unicode=True)
    except ValueError:  # an integer too long to print
        return
    load_all(write(folder, "structured.yaml", text.encode("utf-8", "surrogatepass")))


# ------------------------------------------------------------------------ the real command


def test_check_on_binary_garbage_data_exits_2_with_one_line(tmp_path, tiny_llama, capsys):
    from specialize.cli import main

    data = write_tiny_data(tmp_path / "data")
    data.write_bytes(bytes(range(256)) * 8)
    cfg = write_tiny_config(tmp_path, tiny_llama, data)
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("specialize: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    assert f"{data}:1: NUL byte at byte 1" in errors[0]


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (
            b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)),
            ":1: not valid UTF-8 at byte 1 of the line",
        ),
        ("data: {path: x}\n".encode("utf-16"), ":1: the file is UTF-16"),
        (b"data: " + b"[" * 1200 + b"\n", ": malformed YAML: nested too deeply"),
    ],
)
def test_check_on_garbage_config_exits_2_with_one_line(tmp_path, capsys, data, expect):
    from specialize.cli import main

    cfg = write(tmp_path, "config.yaml", data)
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"specialize: error: {cfg}"), err
    assert expect in err[0]


def test_nan_and_infinite_numbers_are_never_records(folder):
    """NaN (Python's json writes it for a missing float) reads as null; Infinity is refused."""
    path = write(folder, "nan.jsonl", b'{"prompt": "q", "response": "r", "score": NaN}\n')
    recs, _ = read_records(path)
    assert recs[0]["score"] is None and not any(
        isinstance(v, float) and math.isnan(v) for v in recs[0].values()
    )
    path = write(folder, "inf.jsonl", b'{"prompt": "q", "response": "r", "score": 1e999}\n')
    with pytest.raises(SpecializeError, match=r"inf\.jsonl:1: .*1e999 is out of range"):
        read_records(path)
