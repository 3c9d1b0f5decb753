"""Constrained decoding on this CPU: llguidance vs xgrammar vs outlines-core.

    .venv/bin/python bench/constrained_libs.py --json bench/constrained_libs.json
    .venv/bin/python bench/constrained_libs.py --walks 3          # a quick check

The inference engine (``specialize.infer``) masks the logits of every constrained row at every
decoding step, so the library it uses decides how much a JSON answer costs. This script puts the
three maintained candidates through the same steps on the bundled model's tokenizer
(SmolLM2-135M-Instruct, loaded with ``specialize.models.load`` as the engine loads it, under the
installed transformers):

- **tokenizer**: can the library build its token table from the Hugging Face tokenizer object,
  and how long it takes (outlines-core has no adapter for one: its ``Vocabulary.from_pretrained``
  fetches from the Hub, so the bench converts the byte-level tokens itself, as ``outlines`` does);
- **compile**: seconds from a pydantic JSON schema (a list of 1-5 objects, each with an enum of 3
  values, a free string and a list of 1-3 strings) to a matcher ready to mask, fresh each time
  (no cache), median of 3; the first mask after it is reported apart (lazy libraries pay there);
- **mask**: microseconds to compute one row's token mask, per token, over walks that follow the
  tokens of ``--walks`` reference answers (compact JSON, as the tokenizer encodes them) from the
  start to the end-of-turn token; every reference token must be allowed and the end-of-turn
  token must be allowed at the end (a library that rejects one is wrong, not just slow);
- **regex / choice**: the same walk for a regex and for a choice among literal strings;
- **wide logits**: a model whose logits are wider than the tokenizer (padded heads are common):
  does the library take that width and keep the extra ids disallowed.

With ``specialize.infer.constraints`` importable, it also times the engine's real step for
``--rows`` rows (``TokenMasker.apply`` on ``[rows, vocab]`` logits plus ``RowState.consume``).

A library that is not installed is reported as such. The committed JSON was measured with the
three installed in one environment; xgrammar depends on torch and (on Linux x86-64) triton, so
install it into a scratch venv that reuses this one's torch rather than into ``.venv``::

    python -m venv /tmp/cvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" \\
        > /tmp/cvenv/lib/python3.11/site-packages/main.pth
    /tmp/cvenv/bin/pip install --no-deps xgrammar==0.2.8 apache-tvm-ffi outlines-core==0.2.14
    /tmp/cvenv/bin/python bench/constrained_libs.py --json bench/constrained_libs.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT))

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter  # noqa: E402


class Kind(StrEnum):
    fact = "fact"
    estimate = "estimate"
    question = "question"


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")  # closed objects, as specialize compiles them

    kind: Kind
    text: str
    tags: Annotated[list[str], Field(min_length=1, max_length=3)]


Items = Annotated[list[Item], Field(min_length=1, max_length=5)]

REGEX = r"(19|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]) [A-Z][a-z]+( [a-z]+){0,6}\."
REGEX_REFS = [
    "1969-07-20 Apollo landed on the moon.",
    "2021-12-25 Webb launched.",
    "1957-10-04 Sputnik orbits the earth every ninety minutes.",
]
CHOICES = ["low earth orbit", "geostationary orbit", "lunar orbit", "heliocentric"]
EXTRA_WIDTH = 64  # logits padded past the tokenizer, as models with padded heads have

WORDS = (
    "orbit thrust delta-v apogee perigee telescope reaction wheel star tracker L2 Sun Earth "
    'rocket nozzle 35,786 km 7.8 km/s ~408 km 92.68 min mass ratio exhaust velocity "quoted" '
    "it's 180°C café α-centauri"
).split()


def reference_items(rng: random.Random) -> str:
    """One compact JSON answer of the bench schema, with words, numbers, quotes and accents."""
    items = []
    for _ in range(rng.randint(1, 5)):
        items.append(
            {
                "kind": rng.choice(list(Kind)).value,
                "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))),
                "tags": [rng.choice(WORDS) for _ in range(rng.randint(1, 3))],
            }
        )
    TypeAdapter(Items).validate_python(items)
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def pctl(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def footprint(dist: str) -> dict[str, Any]:
    """Installed size of a distribution's own files and what it requires to run."""
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return {"installed": False}
    size = 0
    for f in d.files or []:
        p = Path(str(d.locate_file(f)))
        if p.is_file():
            size += p.stat().st_size
    reqs = [r.split(";")[0].strip() for r in d.requires or [] if "extra ==" not in r]
    return {
        "installed": True,
        "version": d.version,
        "own_mb": round(size / 2**20, 1),
        "requires": reqs,
    }


# --------------------------------------------------------------------------------------------
# One adapter per library: build a token table, compile, make a row, fill its mask, consume.


class Lib:
    name = ""
    dist = ""
    module = ""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
        raise NotImplementedError

    def compile(self, kind: str, payload: Any) -> Any: ...
    def row(self, compiled: Any) -> Any: ...
    def fill(self, row: Any, mask_row: Any) -> None: ...
    def consume(self, row: Any, token: int) -> bool: ...
    def words(self) -> int:
        """Int32 words in one row's mask."""
        return (self.vocab_size + 31) // 32


class Llguidance(Lib):
    name = dist = module = "llguidance"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=stop_ids)
        self.vocab_size = self.tok.vocab_size

    def compile(self, kind: str, payload: Any) -> Any:
        M = self.llg.LLMatcher
        if kind == "json":
            opts = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
            grammar = M.grammar_from_json_schema(payload, overrides=opts)
        elif kind == "regex":
            grammar = M.grammar_from_regex(payload)
        else:
            grammar = M.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in payload))
        m = M(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def row(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def fill(self, row: Any, mask_row: Any) -> None:
        row.unsafe_compute_mask_ptr(mask_row.data_ptr(), mask_row.numel() * 4)

    def consume(self, row: Any, token: int) -> bool:
        return row.consume_token(token)


class Xgrammar(Lib):
    name = dist = module = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids
        )
        self.vocab_size = info.vocab_size
        # cache off: every compile is timed from scratch; 2 threads = this machine's cores
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2, cache_enabled=False)

    def compile(self, kind: str, payload: Any) -> Any:
        if kind == "json":
            return self.compiler.compile_json_schema(
                json.dumps(payload), any_whitespace=False, separators=(",", ":")
            )
        if kind == "regex":
            return self.compiler.compile_regex(payload)
        return self.compiler.compile_grammar(
            "root ::= " + " | ".join(json.dumps(c) for c in payload)
        )

    def row(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, row: Any, mask_row: Any) -> None:
        row.fill_next_token_bitmask(mask_row.unsqueeze(0), 0)

    def consume(self, row: Any, token: int) -> bool:
        return row.accept_token(token)


class OutlinesCore(Lib):
    name = "outlines-core"
    dist = module = "outlines_core"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
        import outlines_core

        self.oc = outlines_core
        self.vocab_size = vocab_size
        self.stop_ids = stop_ids
        # No adapter for a tokenizer object: turn byte-level token strings back into bytes.
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        specials = set(tokenizer.all_special_ids)
        table: dict[bytes, list[int]] = {}
        for tid in range(len(tokenizer)):
            if tid in specials:
                continue
            piece = tokenizer.convert_ids_to_tokens(tid)
            if piece is None or any(ch not in byte_of for ch in piece):
                continue
            table.setdefault(bytes(byte_of[ch] for ch in piece), []).append(tid)
        self.vocab = outlines_core.Vocabulary(stop_ids[0], table)

    def compile(self, kind: str, payload: Any) -> Any:
        if kind == "json":
            regex = self.oc.json_schema.build_regex_from_schema(json.dumps(payload), "")
        elif kind == "regex":
            regex = payload
        else:
            import re

            regex = "|".join(re.escape(c) for c in payload)
        return self.oc.Index(regex, self.vocab)

    def row(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill(self, row: Any, mask_row: Any) -> None:
        row.write_mask_into(mask_row.data_ptr(), mask_row.numel(), 4)

    def consume(self, row: Any, token: int) -> bool:
        try:
            row.advance(token, return_tokens=False)
        except Exception:  # noqa: BLE001 - the guide raises on a token it does not allow
            return False
        return True


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table (byte-level BPE token strings use it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


LIBS: list[type[Lib]] = [Llguidance, Xgrammar, OutlinesCore]


# --------------------------------------------------------------------------------------------


def allowed(mask_row: Any, token: int) -> bool:
    return bool((int(mask_row[token // 32]) >> (token % 32)) & 1)


def walk(lib: Lib, compiled: Any, refs: list[list[int]], stop: int) -> dict[str, Any]:
    """Follow each reference's tokens, timing every mask; then the end-of-turn must be allowed.

    Each mask is timed twice: wall clock, and the CPU time of this thread (the libraries compute
    a single row's mask in the calling thread), which other processes on a busy machine do not
    inflate. The first walk after compiling is reported apart: lazy libraries build lexer states
    as they meet them, and later rows of the same grammar reuse them."""
    import torch

    buf = torch.zeros(lib.words(), dtype=torch.int32)
    wall: list[float] = []
    cpu: list[float] = []
    first_walk_cpu = 0.0
    rejected = 0
    for n, ids in enumerate(refs):
        row = lib.row(compiled)
        for i, tok in enumerate([*ids, stop]):
            c, t = time.thread_time(), time.perf_counter()
            lib.fill(row, buf)
            t, c = time.perf_counter() - t, time.thread_time() - c
            wall.append(t * 1e6)
            cpu.append(c * 1e6)
            if n == 0:
                first_walk_cpu += c
            if not allowed(buf, tok) or (i < len(ids) and not lib.consume(row, tok)):
                rejected += 1
                break
    later = cpu[len(refs[0]) + 1 :] if len(refs) > 1 else cpu
    return {
        "masks": len(cpu),
        "cpu_us_mean": round(statistics.fmean(cpu), 1),
        "cpu_us_p50": round(pctl(cpu, 0.50), 1),
        "cpu_us_p99": round(pctl(cpu, 0.99), 1),
        "cpu_us_max": round(max(cpu), 1),
        "wall_us_mean": round(statistics.fmean(wall), 1),
        "wall_us_p99": round(pctl(wall, 0.99), 1),
        "first_walk_cpu_ms": round(first_walk_cpu * 1e3, 2),
        "later_walks_cpu_us_mean": round(statistics.fmean(later), 1),
        "walks_rejected": rejected,
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_lib(
    cls: type[Lib],
    tokenizer: Any,
    stop: int,
    refs: dict[str, list[list[int]]],
    schema: dict[str, Any],
) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"package": footprint(cls.dist)}
    if not out["package"]["installed"]:
        return out
    n_tok = len(tokenizer)
    # import time on top of torch + transformers, which the bench has imported already
    out["package"]["import_s"] = round(timed(lambda: importlib.import_module(cls.module))[0], 2)
    try:
        secs, lib = timed(lambda: cls(tokenizer, n_tok, [stop]))
    except Exception as err:  # noqa: BLE001 - a library that cannot take the tokenizer
        out["tokenizer"] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
        return out
    out["tokenizer"] = {"ok": True, "seconds": round(secs, 3), "vocab": lib.vocab_size}

    compiles, firsts = [], []
    for _ in range(3):
        secs, compiled = timed(lambda: lib.compile("json", schema))
        compiles.append(secs)
        buf = torch.zeros(lib.words(), dtype=torch.int32)
        row = lib.row(compiled)
        firsts.append(timed(lambda row=row, buf=buf: lib.fill(row, buf))[0])
    out["json_compile_s"] = round(statistics.median(compiles), 4)
    out["json_first_mask_ms"] = round(statistics.median(firsts) * 1e3, 2)
    out["json_walk"] = walk(lib, compiled, refs["json"], stop)
    for kind, payload in (("regex", REGEX), ("choice", CHOICES)):
        try:
            secs, compiled = timed(lambda kind=kind, payload=payload: lib.compile(kind, payload))
            out[f"{kind}_compile_s"] = round(secs, 4)
            out[f"{kind}_walk"] = walk(lib, compiled, refs[kind], stop)
        except Exception as err:  # noqa: BLE001 - unsupported is a result here
            out[f"{kind}_walk"] = {"error": f"{type(err).__name__}: {err}"[:300]}
    out["wide_logits"] = wide_logits(cls, tokenizer, stop)
    return out


def wide_logits(cls: type[Lib], tokenizer: Any, stop: int) -> dict[str, Any]:
    """Build for a head ``EXTRA_WIDTH`` wider than the tokenizer; extra ids must stay masked."""
    import torch

    n_tok = len(tokenizer)
    try:
        lib = cls(tokenizer, n_tok + EXTRA_WIDTH, [stop])
        row = lib.row(lib.compile("regex", r"[^\n]{0,40}"))
        buf = torch.zeros((n_tok + EXTRA_WIDTH + 31) // 32, dtype=torch.int32)
        lib.fill(row, buf)
    except Exception as err:  # noqa: BLE001
        return {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
    bits = ((buf.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).view(-1)
    return {
        "ok": True,
        "library_vocab": lib.vocab_size,
        "allowed_in_tokenizer": int(bits[:n_tok].sum()),
        "allowed_past_tokenizer": int(bits[n_tok : n_tok + EXTRA_WIDTH].sum()),
    }


def engine_step(
    tokenizer: Any,
    stop_ids: list[int],
    refs: list[list[int]],
    rows: int,
    schema: dict[str, Any],
    steps: int = 300,
) -> dict[str, Any]:
    """``TokenMasker.apply`` + ``RowState.consume`` for ``rows`` rows, as the engine calls them.

    Every row follows a reference answer's tokens (each must survive the mask); a row that
    finishes starts the next answer, so all rows stay constrained. Wall and process CPU time
    per step; the first answers pay the lazy lexer's warm-up, as a real run's do."""
    import torch

    from specialize.infer.constraints import TokenMasker
    from specialize.infer.types import Constraint

    n_tok = len(tokenizer)
    secs, masker = timed(lambda: TokenMasker(tokenizer, n_tok, stop_ids))
    constraint = Constraint.json_schema(schema)
    states = [masker.start(constraint) for _ in range(rows)]
    pos = [0] * rows
    which = list(range(rows))
    nxt = rows
    apply_w, apply_c, consume_w = [], [], []
    logits = torch.zeros(rows, n_tok)
    for step in range(steps):
        logits.normal_()
        c, t = time.process_time(), time.perf_counter()
        masker.apply(logits, states)
        apply_w.append(time.perf_counter() - t)
        apply_c.append(time.process_time() - c)
        t = time.perf_counter()
        for r in range(rows):
            ids = refs[which[r] % len(refs)]
            tok = ids[pos[r]] if pos[r] < len(ids) else stop_ids[0]
            if not torch.isfinite(logits[r, tok]):
                raise SystemExit(f"engine step {step}: the mask refused reference token {tok}")
            states[r].consume(tok)
            pos[r] += 1
        consume_w.append(time.perf_counter() - t)
        for r in range(rows):  # a finished row gets the next answer, so all rows stay busy
            if states[r].error:
                raise SystemExit(f"engine step {step}: {states[r].error}")
            if states[r].finished or pos[r] > len(refs[which[r] % len(refs)]):
                states[r], pos[r], which[r] = masker.start(constraint), 0, nxt
                nxt += 1
    step_ms = [(a + b) * 1e3 for a, b in zip(apply_w, consume_w, strict=True)]
    return {
        "rows": rows,
        "steps": steps,
        "masker_init_s": round(secs, 3),
        "answers_finished": nxt - rows,
        "apply_wall_ms_mean": round(statistics.fmean(apply_w) * 1e3, 3),
        "apply_cpu_ms_mean": round(statistics.fmean(apply_c) * 1e3, 3),
        "consume_wall_ms_mean": round(statistics.fmean(consume_w) * 1e3, 3),
        "step_wall_ms_mean": round(statistics.fmean(step_ms), 3),
        "step_wall_ms_p50": round(pctl(step_ms, 0.5), 3),
        "step_wall_ms_p99": round(pctl(step_ms, 0.99), 3),
    }


def model_step(rows: int, steps: int = 20) -> dict[str, Any]:
    """The bundled model's own decode step for ``rows`` rows (KV cache, float32), for scale:
    the masking overhead matters only relative to this."""
    import torch

    from specialize.models.load import load_model, resolve

    model = load_model(resolve("bundled:smollm2-135m-instruct"), "float32")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (rows, 48), generator=gen)
    times = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            t = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - t)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return {
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
        "decode_step_ms_mean": round(statistics.fmean(times[2:]) * 1e3, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--walks", type=int, default=30, help="reference JSON answers walked")
    ap.add_argument("--rows", type=int, default=16, help="rows of the engine-step measurement")
    ap.add_argument("--libs", default="llguidance,xgrammar,outlines-core")
    ap.add_argument("--no-model", action="store_true", help="skip the model's decode step")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine, 2 threads swing 10x with the load)",
    )
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    from specialize.models.load import load_tokenizer, resolve

    secs, tokenizer = timed(lambda: load_tokenizer(resolve("bundled:smollm2-135m-instruct")))
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    schema = TypeAdapter(Items).json_schema()
    rng = random.Random(17)
    texts = [reference_items(rng) for _ in range(args.walks)]

    def enc(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"])

    refs = {
        "json": [enc(t) for t in texts],
        "regex": [enc(t) for t in REGEX_REFS],
        "choice": [enc(c) for c in CHOICES],
    }
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}",
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "tokenizer": "bundled:smollm2-135m-instruct",
        "tokenizer_vocab": len(tokenizer),
        "tokenizer_load_s": round(secs, 1),
        "json_reference_tokens_mean": round(statistics.fmean(len(r) for r in refs["json"]), 1),
        "libraries": {},
    }
    wanted = args.libs.split(",")
    for cls in LIBS:
        if cls.name in wanted:
            print(f"[{cls.name}] ...", file=sys.stderr, flush=True)
            result["libraries"][cls.name] = bench_lib(cls, tokenizer, stop, refs, schema)
    try:
        import specialize.infer.constraints  # noqa: F401
    except ImportError:
        result["engine_step"] = None
    else:
        stops = sorted({stop, tokenizer.eos_token_id})
        result["engine_step"] = engine_step(tokenizer, stops, refs["json"], args.rows, schema)
    result["model_step"] = None if args.no_model else model_step(args.rows)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def print_table(r: dict[str, Any]) -> None:
    print(
        f"\n{r['tokenizer']} (vocab {r['tokenizer_vocab']}), transformers {r['transformers']}, "
        f"{r['machine']}; JSON answers of {r['json_reference_tokens_mean']} tokens on average"
    )
    print("mask times are per row per token, CPU time of the computing thread (wall in the JSON)")
    head = (
        "library",
        "version",
        "MB",
        "import s",
        "tokenizer s",
        "compile s",
        "1st mask ms",
        "mask us mean",
        "p99",
        "1st answer ms",
        "regex",
        "choice",
        "wide logits",
    )
    rows = [head]
    for name, d in r["libraries"].items():
        p = d["package"]
        if not p["installed"]:
            rows.append((name, "not installed") + ("",) * (len(head) - 2))
            continue
        if not d["tokenizer"]["ok"]:
            rows.append(
                (name, p["version"], str(p["own_mb"]), "", "FAIL") + ("",) * (len(head) - 5)
            )
            continue
        w = d["json_walk"]

        def ok(walk: dict[str, Any]) -> str:
            if "error" in walk:
                return "no"
            return "yes" if not walk["walks_rejected"] else f"{walk['walks_rejected']} rejected"

        wide = d["wide_logits"]
        wide_s = (
            ("yes" if not wide["allowed_past_tokenizer"] else "extra ids allowed")
            if wide["ok"]
            else "no"
        )
        rows.append(
            (
                name,
                p["version"],
                str(p["own_mb"]),
                str(p["import_s"]),
                str(d["tokenizer"]["seconds"]),
                str(d["json_compile_s"]),
                str(d["json_first_mask_ms"]),
                f"{w['cpu_us_mean']}" + ("" if not w["walks_rejected"] else "*"),
                str(w["cpu_us_p99"]),
                str(w["first_walk_cpu_ms"]),
                ok(d["regex_walk"]),
                ok(d["choice_walk"]),
                wide_s,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)))
    e = r.get("engine_step")
    if e:
        print(
            f"engine step, {e['rows']} JSON rows (TokenMasker): "
            f"{e['step_wall_ms_mean']} ms mean wall, p50 {e['step_wall_ms_p50']}, "
            f"p99 {e['step_wall_ms_p99']} (apply {e['apply_wall_ms_mean']} wall / "
            f"{e['apply_cpu_ms_mean']} CPU + consume {e['consume_wall_ms_mean']}) "
            f"over {e['steps']} steps"
        )
    if r.get("model_step"):
        m = r["model_step"]
        print(
            f"model decode step, {m['rows']} rows, {m['torch_threads']} torch threads: "
            f"{m['decode_step_ms_mean']} ms"
        )
    print(f"load average before {r['load_average_before']}, after {r['load_average_after']}")


if __name__ == "__main__":
    main()
