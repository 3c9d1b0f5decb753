"""LlamaCppBackend: a GGUF file answering the inference contract's requests through llama.cpp.

The GGUF is the tiny random LLaMA converted as in test_gguf_export.py. A random model says
nothing sensible, which is what makes the constrained cases meaningful: whatever it would
write, the grammar must make it a valid object or one of the choices.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field
from test_gguf_export import PROMPTS

from specialize.errors import SpecializeError
from specialize.infer.llama_process import LlamaProcess, NativeCrash, choice_gbnf, gbnf_literal
from specialize.infer.types import Backend, Constraint, Request, Result, Sampling

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(
    not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (make setup builds it)"
)

CHATS = [list(p) for p in PROMPTS]  # system + user turns, ending with the user


class Part(BaseModel):
    name: str = Field(max_length=12)  # bounded: a random model rambles inside free strings
    count: int


class Answer(BaseModel):
    kind: Literal["orbit", "planet", "other"]
    parts: list[Part] = Field(min_length=1, max_length=2)
    ok: bool


# Each must come back exactly: quotes, backslashes, control characters and UTF-8 in literals.
TRICKY_CHOICES = ['say "no"', "a\\b", 'back\\"slash', "line\nbreak", "tab\there", "é ü ✓", "x\x01y"]


@pytest.fixture(scope="module")
def f16(tiny_llama, tmp_path_factory) -> Path:
    from specialize.export.gguf import convert_to_gguf

    out = tmp_path_factory.mktemp("llamacpp") / "tiny-f16.gguf"
    return Path(convert_to_gguf(tiny_llama, out, "f16")["path"])


@pytest.fixture(scope="module")
def backend(f16):
    from specialize.infer.llamacpp import LlamaCppBackend

    with LlamaCppBackend(f16, n_ctx=1024) as b:
        yield b


# --------------------------------------------------------------------- no llama.cpp needed


def test_gbnf_literals_escape_what_the_grammar_parser_reads():
    assert gbnf_literal("plain") == '"plain"'
    assert gbnf_literal('a"b\\c') == r'"a\"b\\c"'
    assert gbnf_literal("x\ny\rz\t") == r'"x\ny\rz\t"'
    assert gbnf_literal("\x01\x7f") == r'"\x01\x7F"'
    assert gbnf_literal("é✓") == '"é✓"'
    assert choice_gbnf(["yes", "no"]) == 'root ::= "yes" | "no"\n'
    with pytest.raises(ValueError):
        choice_gbnf([])


def test_cut_at_stop_takes_the_earliest():
    from specialize.infer.types import cut_at_stop

    assert cut_at_stop("abcXdefY", ["Y", "X"]) == ("abc", True)
    assert cut_at_stop("abc", ["Z", ""]) == ("abc", False)
    assert cut_at_stop("abc", None) == ("abc", False)


def test_regex_requests_are_refused_before_any_work(tmp_path):
    from specialize.infer.llamacpp import grammar_for

    with pytest.raises(SpecializeError, match="regex constraints need the HF or HTTP backend"):
        grammar_for(Request(messages=CHATS[0], constraint=Constraint.regex(r"\d{3}")))
    choice = Request(messages=CHATS[0], constraint=Constraint.choice(["a", "b"]))
    assert grammar_for(choice) == ("choice", ("a", "b"))
    assert grammar_for(Request(messages=CHATS[0])) is None


# ------------------------------------------------------------------------------ llama.cpp


@needs_llama_cpp
def test_is_a_backend_named_after_the_file(backend, f16):
    assert isinstance(backend, Backend)
    assert backend.name == f"gguf:{f16.name}"


@needs_llama_cpp
def test_greedy_answers_equal_llama_cpp_chat_completion(backend, f16):
    """The backend adds nothing to llama.cpp's own greedy chat completion."""
    from specialize.infer.llama_process import LlamaProcess

    with LlamaProcess(f16, n_ctx=1024, purpose="testing") as llm:
        want = [
            llm.chat(list(c), max_tokens=12, temperature=0.0, repeat_penalty=1.0)["choices"][0]
            for c in CHATS
        ]
    got = backend.generate([Request(messages=c, max_new_tokens=12) for c in CHATS], progress=False)
    assert [r.text for r in got] == [(w.get("message") or {}).get("content") or "" for w in want]
    assert [r.stopped for r in got] == [w.get("finish_reason") == "stop" for w in want]
    assert all(r.ok and r.finish_reason in ("stop", "length") for r in got)
    assert all(r.finish_reason == "stop" or r.new_tokens == 12 for r in got)


@needs_llama_cpp
def test_results_in_order_with_tags_and_one_callback_each(backend):
    seen: list[tuple[int, Result]] = []
    reqs = [Request(messages=c, max_new_tokens=4, tag=f"r{i}") for i, c in enumerate(CHATS)]
    out = backend.generate(reqs, progress=False, on_result=lambda i, r: seen.append((i, r)))
    assert [r.tag for r in out] == [f"r{i}" for i in range(len(CHATS))]
    assert sorted(i for i, _ in seen) == list(range(len(CHATS)))  # in the order they finish
    assert all(r is out[i] for i, r in seen)
    assert backend.generate([], progress=False) == []


@needs_llama_cpp
def test_stop_strings_cut_the_text(backend):
    chat = [{"role": "user", "content": "Hi"}]
    first = backend.generate([Request(messages=chat, max_new_tokens=16)], progress=False)[0]
    assert first.finish_reason == "length" and first.text.strip(), first
    stop = first.text.strip()[-1]  # a character the greedy answer reaches only after a while
    cut = backend.generate(
        [Request(messages=chat, max_new_tokens=16, stop=("never-seen", stop))], progress=False
    )[0]
    assert cut.finish_reason == "stop" and cut.ok
    assert cut.text == first.text[: first.text.index(stop)]
    assert cut.new_tokens < first.new_tokens


@needs_llama_cpp
def test_pydantic_constraint_gives_validated_objects(backend):
    c = Constraint.of(Answer)
    reqs = [Request(messages=m, max_new_tokens=400, constraint=c) for m in CHATS]
    out = backend.generate(reqs, progress=False)
    for r in out:
        assert r.ok and r.finish_reason == "stop", r
        assert isinstance(r.value, Answer) and all(isinstance(p, Part) for p in r.value.parts)
        assert Answer.model_validate_json(r.text) == r.value


@needs_llama_cpp
def test_choice_constraint_gives_one_of_the_choices(backend):
    choices = ["yes", "no", "maybe so"]
    reqs = [
        Request(messages=m, max_new_tokens=20, constraint=Constraint.choice(choices)) for m in CHATS
    ]
    for r in backend.generate(reqs, progress=False):
        assert r.ok and r.finish_reason == "stop" and r.value in choices and r.text == r.value, r


@needs_llama_cpp
def test_choice_literals_are_escaped_exactly(backend):
    """One choice at a time, so the grammar's language is that string alone: the answer is
    the choice exactly, whatever characters it holds."""
    reqs = [
        Request(messages=CHATS[0], max_new_tokens=30, constraint=Constraint.choice([c]))
        for c in TRICKY_CHOICES
    ]
    out = backend.generate(reqs, progress=False)
    assert [r.text for r in out] == TRICKY_CHOICES
    assert all(r.ok and r.finish_reason == "stop" for r in out)


@needs_llama_cpp
def test_regex_constraint_raises_and_answers_nothing(backend):
    calls: list[int] = []
    reqs = [
        Request(messages=CHATS[0], max_new_tokens=4),
        Request(messages=CHATS[1], max_new_tokens=4, constraint=Constraint.regex(r"[a-z]+")),
    ]
    with pytest.raises(SpecializeError, match="regex constraints need the HF or HTTP backend"):
        backend.generate(reqs, progress=False, on_result=lambda i, r: calls.append(i))
    assert calls == []


@needs_llama_cpp
def test_a_schema_llama_cpp_cannot_convert_is_an_error_result(backend):
    bad = Constraint.json_schema({"type": "no-such-type"})
    out = backend.generate(
        [
            Request(messages=CHATS[0], max_new_tokens=8, constraint=bad, tag="bad"),
            Request(messages=CHATS[1], max_new_tokens=4, tag="fine"),
        ],
        progress=False,
    )
    assert out[0].finish_reason == "error" and out[0].text == "" and not out[0].ok
    assert "cannot turn this JSON schema into a grammar" in out[0].error
    assert "\n" not in out[0].error and out[0].tag == "bad"
    assert out[1].ok and out[1].tag == "fine"  # the child is still alive


@needs_llama_cpp
def test_an_unparseable_grammar_is_an_error_not_a_crash(f16):
    """llama-cpp-python would add llama.cpp's NULL sampler to the chain (a crash); the child
    checks the grammar with llama.cpp's parser first."""
    with LlamaProcess(f16, n_ctx=256) as llm:
        with pytest.raises(SpecializeError, match="cannot parse the gbnf grammar") as info:
            llm.chat(CHATS[0], grammar=("gbnf", 'root ::= ( "a" '), max_tokens=4)
        assert not isinstance(info.value, NativeCrash)
        ok = llm.chat(CHATS[0], grammar=("gbnf", 'root ::= "a" | "b"'), max_tokens=4)
        assert ok["choices"][0]["message"]["content"] in ("a", "b")


@needs_llama_cpp
def test_prompt_ids_continue_greedily(backend, f16, tiny):
    _, tok = tiny
    prompt = tok("Hall thrusters ionise xenon", add_special_tokens=False)["input_ids"]
    with LlamaProcess(f16, n_ctx=256) as llm:
        ids, stopped = llm.greedy(prompt, 10)
    r = backend.generate([Request(prompt_ids=prompt, max_new_tokens=10)], progress=False)[0]
    assert r.ok and r.new_tokens == len(ids) and r.text == tok.decode(ids)
    assert r.finish_reason == ("stop" if stopped else "length")
    c = Constraint.choice(["alpha", "beta"])
    r = backend.generate(
        [Request(prompt_ids=prompt, max_new_tokens=8, constraint=c)], progress=False
    )[0]
    assert r.ok and r.value in ("alpha", "beta")


@needs_llama_cpp
def test_seeded_sampling_depends_on_the_request_alone(backend):
    s = Sampling(temperature=1.0, top_p=0.9, seed=7)
    one = Request(messages=CHATS[0], max_new_tokens=8, sampling=s)
    other = Request(messages=CHATS[1], max_new_tokens=8, sampling=Sampling(1.0, seed=1))
    a = backend.generate([one], progress=False)[0]
    b = backend.generate([other, one], progress=False)[1]
    assert a.ok and a.text == b.text and a.new_tokens == b.new_tokens


@needs_llama_cpp
def test_adapters_are_refused_and_close_ends_the_child(f16):
    from specialize.infer.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(f16, n_ctx=256)
    with pytest.raises(SpecializeError, match="no LoRA adapters"):
        b.generate([Request(messages=CHATS[0], adapter="space")], progress=False)
    llm = b.llm
    assert llm is not None and llm.pid is not None
    b.close()
    assert llm.pid is None
    b.close()  # twice is harmless
    with pytest.raises(SpecializeError, match="closed"):
        b.generate([Request(messages=CHATS[0])], progress=False)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from transformers import AutoTokenizer

    return None, AutoTokenizer.from_pretrained(tiny_llama)


# ------------------------------------------------------------- llama.cpp's batching loop

LONG = [
    [{"role": "user", "content": f"Question {k}: " + "orbit " * (k * 7 % 23)}] for k in range(12)
]


@needs_llama_cpp
def test_batched_greedy_answers_equal_one_at_a_time(f16):
    """Twelve requests decoded together (prompts of different lengths, joining one running
    batch) get the answers each gets alone: a row never sees another row's cache."""
    from specialize.infer.llamacpp import LlamaCppBackend

    reqs = [Request(messages=c, max_new_tokens=10 + k) for k, c in enumerate(LONG)]
    with LlamaCppBackend(f16, n_ctx=256, slots=1) as alone:
        want = alone.generate(reqs, progress=False)
    with LlamaCppBackend(f16, n_ctx=256, slots=8, kv_cells=512) as together:
        got = together.generate(reqs, progress=False)
    assert [(r.text, r.new_tokens, r.finish_reason) for r in got] == [
        (r.text, r.new_tokens, r.finish_reason) for r in want
    ]
    assert all(r.prompt_tokens and r.prompt_tokens > 5 for r in got)


@needs_llama_cpp
def test_requests_from_threads_join_the_running_batch(backend):
    """The server's path: ``submit`` from many threads while a batch runs; streamed pieces
    join to the final text, and a cancelled request ends with an error, not an answer."""
    from concurrent.futures import ThreadPoolExecutor

    reqs = [Request(messages=c, max_new_tokens=12) for c in LONG[:8]]
    want = [r.text for r in backend.generate(reqs, progress=False)]

    def streamed(r: Request) -> tuple[str, str]:
        t = backend.submit(r, stream=True)
        pieces = "".join(t.stream())
        return pieces, t.result(timeout=60).text

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(streamed, reqs))
    assert [p for p, _ in got] == want and [t for _, t in got] == want
    slow = backend.submit(Request(messages=LONG[3], max_new_tokens=400))
    slow.cancel()
    res = slow.result(timeout=60)
    assert res.finish_reason == "error" and res.error == "cancelled"
    assert backend.generate(reqs[:1], progress=False)[0].text == want[0]  # still serving


@needs_llama_cpp
def test_context_bounds_per_request(f16):
    from specialize.infer.llamacpp import LlamaCppBackend

    with LlamaCppBackend(f16, n_ctx=64) as b:
        long, short = (
            Request(messages=[{"role": "user", "content": "orbit " * 80}]),
            Request(messages=CHATS[0], max_new_tokens=500),
        )
        too_long, capped = b.generate([long, short], progress=False)
    assert too_long.finish_reason == "error" and "n_ctx 64" in (too_long.error or "")
    assert capped.ok and capped.prompt_tokens + capped.new_tokens <= 64


@needs_llama_cpp
def test_child_killed_mid_batch_is_a_native_crash_and_keeps_finished_results(f16):
    import os
    import signal

    from specialize.infer.llamacpp import LlamaCppBackend

    b = LlamaCppBackend(f16, n_ctx=256, slots=1)
    kept: list[int] = []

    def kill_after_first(i: int, r: Result) -> None:
        kept.append(i)
        if len(kept) == 1:
            os.kill(b.llm.pid, signal.SIGKILL)

    reqs = [Request(messages=c, max_new_tokens=30) for c in LONG[:6]]
    with pytest.raises(NativeCrash, match="SIGKILL"):
        b.generate(reqs, progress=False, on_result=kill_after_first)
    assert kept and len(kept) < len(reqs)
    late = b.submit(reqs[0])
    assert late.result(timeout=30).finish_reason == "error" and "SIGKILL" in late.final.error
    b.close()


@needs_llama_cpp
def test_a_restarting_backend_serves_again_after_a_crash(f16):
    """The server's GGUF variants restart their child: the request in flight gets an error,
    the next one an answer."""
    import os
    import signal

    from specialize.infer.llamacpp import LlamaCppBackend

    with LlamaCppBackend(f16, n_ctx=256, restart=True) as b:
        want = b.submit(Request(messages=CHATS[0], max_new_tokens=6)).result(timeout=60)
        slow = b.submit(Request(messages=CHATS[1], max_new_tokens=200))
        os.kill(b.llm.pid, signal.SIGKILL)
        assert slow.result(timeout=60).finish_reason == "error"
        again = b.submit(Request(messages=CHATS[0], max_new_tokens=6)).result(timeout=60)
        assert again.ok and again.text == want.text and b.restarts == 1


@needs_llama_cpp
def test_a_prompt_longer_than_one_step_is_read_in_chunks(f16):
    """A prompt over STEP_TOKENS is read across several llama_decode calls while short
    requests decode beside it; every answer equals its one-at-a-time answer."""
    from specialize.infer.llama_batch import STEP_TOKENS
    from specialize.infer.llamacpp import LlamaCppBackend

    words = " ".join(f"orbit{k % 50}" for k in range(STEP_TOKENS // 2 + 100))
    reqs = [Request(messages=[{"role": "user", "content": words}], max_new_tokens=8)]
    reqs += [Request(messages=c, max_new_tokens=8) for c in LONG[:4]]
    with LlamaCppBackend(f16, n_ctx=2048, slots=1) as alone:
        want = alone.generate(reqs, progress=False)
    with LlamaCppBackend(f16, n_ctx=2048, slots=8) as together:
        got = together.generate(reqs, progress=False)
    assert got[0].prompt_tokens > STEP_TOKENS
    assert [(r.text, r.new_tokens) for r in got] == [(r.text, r.new_tokens) for r in want]
