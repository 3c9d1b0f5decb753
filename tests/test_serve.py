"""``specialize serve`` through the official ``openai`` client, on a real server on
127.0.0.1 over tiny run directories: models, chat, streaming, structured output, auth,
unknown models, bounds, the queue's 429, and greedy answers equal to the in-process backend."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from serve_fixtures import make_run, serving

from specialize.infer.types import Request

KEY = "test-key"
MSGS = [{"role": "user", "content": "What is LEO?"}]


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return [make_run(root / "alpha", tiny_llama, 1), make_run(root / "beta", tiny_llama, 2)]


@pytest.fixture(scope="module")
def server(runs):
    with serving(runs, api_key=KEY, max_body_bytes=50_000, max_tokens=200, max_messages=8) as s:
        yield s


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)


class Answer(BaseModel):
    kind: Literal["orbit", "rocket"]
    stages: int = Field(ge=0, le=9)


def test_models_share_one_base_and_list_every_variant(server):
    url, state = server
    ids = sorted(m.id for m in client(url).models.list())
    assert ids == ["alpha", "alpha:base", "beta", "beta:base"]
    backends = {id(v.backend) for v in state.reg.variants.values()}
    assert len(backends) == 1  # two runs over one base: one model in memory, two adapters


def test_greedy_chat_equals_the_in_process_backend_per_adapter(server):
    url, state = server
    c = client(url)
    got = {
        m: c.chat.completions.create(model=m, messages=MSGS, max_tokens=12, temperature=0)
        for m in ("alpha", "beta", "alpha:base")
    }
    backend = state.reg.get("alpha").backend
    for m, resp in got.items():
        want = backend.generate(
            [Request(messages=MSGS, max_new_tokens=12, adapter=state.reg.get(m).adapter)],
            progress=False,
        )[0]
        assert resp.choices[0].message.content == want.text
        assert resp.usage.completion_tokens == want.new_tokens and resp.model == m
    texts = {m: r.choices[0].message.content for m, r in got.items()}
    assert len(set(texts.values())) == 3  # the adapters really are selected per request


def test_stream_joins_to_the_non_streamed_text(server):
    url, _ = server
    c = client(url)
    whole = c.chat.completions.create(model="alpha", messages=MSGS, max_tokens=16, temperature=0)
    pieces, finish = [], None
    for chunk in c.chat.completions.create(
        model="alpha", messages=MSGS, max_tokens=16, temperature=0, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


def test_parse_with_a_pydantic_model_is_decoded_under_its_schema(server):
    url, _ = server
    for model in ("alpha", "beta:base"):
        resp = client(url).chat.completions.parse(
            model=model, messages=MSGS, response_format=Answer, max_tokens=64, temperature=0
        )
        parsed = resp.choices[0].message.parsed
        assert isinstance(parsed, Answer)  # a random model: only the constraint makes it valid


def test_json_object_mode_answers_a_json_object(server):
    url, _ = server
    import json

    resp = client(url).chat.completions.create(
        model="alpha", messages=MSGS, max_tokens=120, temperature=0,
        response_format={"type": "json_object"},
    )  # fmt: skip
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_auth_unknown_model_and_bounds_are_typed_client_errors(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    r = httpx.get(url + "/models")  # no key at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    c = client(url)
    with pytest.raises(openai.NotFoundError, match="not found"):
        c.chat.completions.create(model="gamma", messages=MSGS)
    with pytest.raises(openai.APIStatusError) as big:
        c.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "x" * 60_000}]
        )
    assert big.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="alpha", messages=MSGS, max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="messages"):
        c.chat.completions.create(model="alpha", messages=MSGS * 9, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="context"):
        c.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "word " * 3000}], max_tokens=8
        )
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        c.chat.completions.create(model="alpha", messages=MSGS, n=2)
    with pytest.raises(openai.BadRequestError, match="schema"):
        c.chat.completions.create(
            model="alpha", messages=MSGS, max_tokens=4,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )  # fmt: skip


def test_malformed_bodies_are_400_never_500(server):
    url, _ = server
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body in (b"{not json", b"[]", b'{"model": "alpha"}', b'{"model": 3, "messages": []}',
                 b'{"model":"alpha","messages":[{"role":"robot","content":"x"}]}',
                 b"\xff\xfe\x00garbage", b'{"model":"alpha","messages":[{"role":"user",'
                 b'"content":"x"}],"temperature":"hot"}'):  # fmt: skip
        r = httpx.post(url + "/chat/completions", content=body, headers=h)
        assert r.status_code == 400, (body, r.status_code, r.text)
        assert r.json()["error"]["message"]


def test_queue_full_is_429_with_retry_after(runs):
    with serving(runs[:1], max_pending=1, max_tokens=200) as (url, _):
        c = client(url, "none")
        stream = c.chat.completions.create(
            model="alpha", messages=MSGS, max_tokens=200, temperature=0, stream=True
        )
        first = next(iter(stream))  # the one slot is taken while this stream runs
        assert first.choices[0].delta.role == "assistant"
        body = {"model": "alpha", "messages": MSGS, "max_tokens": 4}
        r = httpx.post(url + "/chat/completions", json=body)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="alpha", messages=MSGS, max_tokens=4)
        stream.close()


def test_concurrent_clients_get_their_own_answers(server):
    url, state = server
    prompts = [f"Question number {i}?" for i in range(12)]
    out: dict[int, str] = {}

    def ask(i: int) -> None:
        msgs = [{"role": "user", "content": prompts[i]}]
        r = client(url).chat.completions.create(
            model="beta", messages=msgs, max_tokens=10, temperature=0
        )
        out[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend = state.reg.get("beta").backend
    want = backend.generate(
        [Request(messages=[{"role": "user", "content": p}], max_new_tokens=10, adapter="beta")
         for p in prompts], progress=False,
    )  # fmt: skip
    assert [out[i] for i in range(len(prompts))] == [w.text for w in want]


def test_metrics_and_health(server):
    url, _ = server
    root = url.removesuffix("/v1")
    assert httpx.get(root + "/health").json()["status"] == "ok"
    assert httpx.get(root + "/metrics").status_code == 401
    text = httpx.get(root + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert "specialize_requests_total" in text and "specialize_completion_tokens_total" in text


def test_binding_beyond_loopback_needs_a_key():
    from specialize.errors import SpecializeError
    from specialize.serve.settings import ServeSettings

    with pytest.raises(SpecializeError, match="API key"):
        ServeSettings(host="0.0.0.0").check()
    ServeSettings(host="0.0.0.0", api_key="k").check()


def test_the_llm_judge_runs_against_our_own_server(tmp_path):
    """``specialize eval --judge URL`` pointed at a ``specialize serve``: every verdict is
    asked under its schema (no fallback to json_object) and answered (no backend errors).
    The judge's rubric is longer than the usual tiny model's 512 positions: this one has 4096."""
    from specialize.models.tiny import save_tiny

    base = save_tiny(tmp_path / "long", max_position_embeddings=4096)
    with serving([make_run(tmp_path / "judge", base, 6)], api_key=KEY, max_tokens=200) as (
        url,
        _,
    ):
        verdicts, summary = _judge(url)
    assert summary["errors"] == 0 and summary["fallbacks"] == 0, verdicts
    assert summary["parsed"] + summary["unparseable"] == 2 and len(verdicts) == 2


def _judge(url: str):
    from specialize.evaluate.judge import judge
    from specialize.infer.http import OpenAIBackend

    backend = OpenAIBackend(url, "judge", api_key=KEY)
    backend.health_check()
    items = [
        {"question": "What is LEO?", "prediction": "Low Earth orbit.", "reference": "LEO."},
        {"question": "What is GEO?", "prediction": "A far orbit.", "reference": "Geostationary.",
         "context": "GEO is 35,786 km up."},
    ]  # fmt: skip
    return judge(backend, items, progress=False, max_new_tokens=150, retries=0)


def test_a_gguf_variant_is_served_through_llama_cpp(tiny_llama, tmp_path):
    """A run's gguf/ files become model ids (``<run>:f16``) answered by a llama.cpp child,
    with the same greedy text as the in-process GGUF backend."""
    from specialize.export.gguf import convert_to_gguf
    from specialize.infer.llamacpp import LlamaCppBackend

    run = make_run(tmp_path / "gamma", tiny_llama, 4)
    (run / "gguf").mkdir()
    gguf = Path(convert_to_gguf(tiny_llama, run / "gguf" / "gamma-F16.gguf", "f16")["path"])
    with serving([run], max_tokens=64, max_context=512) as (url, _):
        c = client(url, "none")
        assert sorted(m.id for m in c.models.list()) == ["gamma", "gamma:base", "gamma:f16"]
        got = c.chat.completions.create(model="gamma:f16", messages=MSGS, max_tokens=12,
                                        temperature=0)  # fmt: skip
        pieces = c.chat.completions.create(model="gamma:f16", messages=MSGS, max_tokens=12,
                                           temperature=0, stream=True)  # fmt: skip
        streamed = "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
    with LlamaCppBackend(gguf, 512) as local:
        want = local.generate([Request(messages=MSGS, max_new_tokens=12)], progress=False)[0]
    assert got.choices[0].message.content == want.text == streamed
    assert got.usage.prompt_tokens == want.prompt_tokens > 0
