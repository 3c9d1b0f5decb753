"""Serving under load: ``specialize serve`` vs llama-cpp-python's own server, on loopback.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py runs/space-qa --json bench/serve_load.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py runs/space-qa --clients 8 --requests 1

A run directory with an adapter and a Q4_K_M GGUF (``make run`` writes both) is served twice,
one server at a time, each in its own process:

- **specialize**: ``specialize serve RUN``; the GGUF variant ``<run>:q4_k_m`` is measured
  against the peer, and the HF variant ``<run>`` (base model + LoRA adapter in the
  continuous-batching engine) at 1 and at ``--clients`` clients;
- **llama_cpp_server**: ``python -m llama_cpp.server`` on the same GGUF file with the same
  context size (``--n-ctx``) and the CPU's cores.

Each client sends ``--requests`` chat requests in turn (greedy, ``--max-tokens``, distinct
prompts from a fixed list), all clients at once. Measured per server: completion tokens per
second of wall time (server-reported usage), p50 and p99 latency, 5xx answers, and **lost**
answers (a request with no complete answer) and **mixed** answers: each prompt is first asked
alone (one client) for a greedy reference, and an answer under load that equals another
prompt's reference instead of its own was routed to the wrong request. ``differs_from_alone``
counts every answer unlike its own reference: on a quantized file this is not zero, because
llama.cpp's quantized kernels round differently for a batch of rows than for one row (a
greedy near-tie then flips); the tests show batched answers equal one-at-a-time answers
exactly on an F16 file, and llama_cpp.server's count is zero only because it never batches.
``--json PATH`` writes ``{"specialize": {...},
"llama_cpp_server": {...}, "ratio": specialize/peer tokens/s, "clients": N, "hf_adapter":
{"1": {...}, "N": {...}}, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is a sun-synchronous orbit?",
    "Why do rockets launch eastward?",
    "What does a heat pipe do on a spacecraft?",
    "What was Sputnik 1?",
    "How does the Deep Space Network talk to probes?",
    "What is delta-v?",
    "Why are launch sites near the equator?",
    "What is a geostationary orbit?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, health: str, log: Path) -> subprocess.Popen:
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server did not come up; see {log}")


async def one(client: Any, url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, "repeat_penalty": 1.0}  # fmt: skip
    t0 = time.perf_counter()
    try:
        r = await client.post(url + "/v1/chat/completions", json=body)
    except Exception as err:  # noqa: BLE001 - a transport failure is a lost answer
        return {"status": 0, "error": type(err).__name__, "s": time.perf_counter() - t0}
    out: dict[str, Any] = {"status": r.status_code, "s": time.perf_counter() - t0}
    if r.status_code == 200:
        data = r.json()
        out["text"] = data["choices"][0]["message"]["content"]
        out["tokens"] = (data.get("usage") or {}).get("completion_tokens", 0)
    return out


async def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=256)) as c:

        async def client(k: int) -> list[tuple[str, dict]]:
            got = []
            for i in range(requests):
                prompt = PROMPTS[(k + i) % len(PROMPTS)]
                got.append((prompt, await one(c, url, model, prompt, max_tokens)))
            return got

        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    flat = [x for r in results for x in r]
    return {"wall_s": wall, "answers": flat}


def summary(run: dict, reference: dict[str, str]) -> dict[str, Any]:
    answers = run["answers"]
    ok = [a for _, a in answers if a["status"] == 200]
    lat = sorted(a["s"] for _, a in answers)
    tokens = sum(a.get("tokens", 0) for a in ok)
    others = {
        p: {t for q, t in reference.items() if q != p and t != reference[p]} for p in reference
    }
    ok_answers = [(p, a["text"]) for p, a in answers if a["status"] == 200]
    mixed = sum(1 for p, t in ok_answers if t != reference.get(p) and t in others.get(p, ()))
    drift = sum(1 for p, t in ok_answers if t != reference.get(p))
    return {
        "tokens_per_s": tokens / run["wall_s"],
        "p50_s": statistics.median(lat),
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "errors_5xx": sum(1 for _, a in answers if a["status"] >= 500),
        "lost": sum(1 for _, a in answers if a["status"] != 200),
        "mixed": mixed,
        "differs_from_alone": drift,
        "requests": len(answers),
        "completion_tokens": tokens,
        "wall_s": run["wall_s"],
    }


def measure(url: str, model: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """(summary at 1 client over the prompts, summary at --clients) for one model id."""
    alone = asyncio.run(load(url, model, 1, len(PROMPTS), args.max_tokens))
    reference = {p: a.get("text") for p, a in alone["answers"]}
    crowd = asyncio.run(load(url, model, args.clients, args.requests, args.max_tokens))
    return summary(alone, reference), summary(crowd, reference)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run directory with adapter/ and gguf/*q4_k_m*.gguf")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=2, help="per client")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    ggufs = sorted(args.run.glob("gguf/*[qQ]4_[kK]_[mM]*.gguf"))
    if not ggufs:
        raise SystemExit(f"no Q4_K_M GGUF in {args.run}/gguf (run `make run` or export)")
    gguf, name, logs = ggufs[0], args.run.resolve().name, Path(os.environ.get("TMPDIR", "/tmp"))
    result: dict[str, Any] = {"clients": args.clients, "requests_per_client": args.requests,
                              "max_tokens": args.max_tokens, "gguf": gguf.name}  # fmt: skip

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "specialize", "serve", str(args.run), "--port", str(port),
           "--max-pending", str(max(64, args.clients * 2)), "--max-context", str(args.n_ctx),
           "--batch-size", str(args.clients)]  # fmt: skip
    proc = start(cmd, url, "/health", logs / "serve_load.specialize.log")
    try:
        gguf_id = next(m["id"] for m in __import__("httpx").get(url + "/v1/models").json()["data"]
                       if m["id"].endswith("q4_k_m"))  # fmt: skip
        hf1, hfn = measure(url, name, args)
        g1, gn = measure(url, gguf_id, args)
    finally:
        proc.terminate()
        proc.wait(timeout=300)
    result["hf_adapter"] = {"1": hf1, str(args.clients): hfn}
    result["specialize"] = gn
    result["specialize_1_client"] = g1

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
           "--n_ctx", str(args.n_ctx), "--n_threads", str(os.cpu_count())]  # fmt: skip
    proc = start(cmd, url, "/v1/models", logs / "serve_load.llama_cpp.log")
    try:
        p1, pn = measure(url, "gguf", args)
    finally:
        proc.terminate()
        proc.wait(timeout=300)
    result["llama_cpp_server"] = pn
    result["llama_cpp_server_1_client"] = p1
    peer = pn["tokens_per_s"]
    result["ratio"] = gn["tokens_per_s"] / peer if peer else None
    for label, s in (("specialize gguf", gn), ("llama_cpp.server", pn), ("specialize hf x1", hf1),
                     (f"specialize hf x{args.clients}", hfn)):  # fmt: skip
        print(f"{label:24s} {s['tokens_per_s']:8.1f} tok/s  p50 {s['p50_s']:.2f}s  "
              f"p99 {s['p99_s']:.2f}s  5xx {s['errors_5xx']}  lost {s['lost']}  "
              f"mixed {s['mixed']}  differs {s['differs_from_alone']}")  # fmt: skip
    print(f"ratio (gguf, {args.clients} clients): {result['ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
