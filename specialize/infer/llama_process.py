"""llama.cpp in a child process, so a crash in native code is an error here, not the end.

llama.cpp is C++ with hand-written SIMD kernels chosen by the build's CPU flags; a kernel that
does not fit the CPU it runs on (AMX builds on some machines, an AVX-512 build on a CPU
without it) dies with SIGSEGV or SIGILL, and inside our process that would take a run that
has trained for an hour with it. Every use of llama.cpp in specialize (quantization, the
round-trip checks, speed, the GGUF inference backend) therefore goes through
:class:`LlamaProcess`: one ``python -m specialize.infer.llama_process`` child per opened
file, driven over a pipe with a handful of high-level operations (tokenize, logits of a
sequence, greedy decoding, chat and prompt completion with an optional grammar, timed
generation). Each operation does its loop in the child, so the pipe is crossed once per
sequence, not once per token. It lives in the inference layer because inference is its main
user; export (quantize, checks, speed) sits above and imports it from here.

When the child dies, :class:`NativeCrash` (a :class:`SpecializeError`) names the signal,
what was being done and the file; the caller keeps everything already finished.

The child imports only the standard library, numpy and llama_cpp (not torch), so it starts
in well under a second. Its own stdout is moved to stderr at start: llama.cpp may print to
fd 1, and the protocol owns the original stdout.

``SPECIALIZE_LLAMA_CRASH=PURPOSE:SUBSTRING[:SIGNAL]`` makes the child kill itself (SIGSEGV
unless SIGNAL names another, e.g. SIGKILL) when it opens a file whose name contains SUBSTRING
for PURPOSE (``*`` matches any purpose); the tests use it to prove that a crash leaves a
resumable run.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from specialize.errors import SpecializeError

CRASH_ENV = "SPECIALIZE_LLAMA_CRASH"
LLAMA_CPP_PIP = "make setup (scripts/install_llama_cpp.py: llama-cpp-python 0.3.36, checked flags)"


class NativeCrash(SpecializeError):
    """The llama.cpp child process died (a signal or an abnormal exit)."""


def require_llama_cpp() -> None:
    """The one-line 'not installed' error, checked here so the child never starts without it
    (found, not imported: the native library is loaded only in the child)."""
    try:
        found = importlib.util.find_spec("llama_cpp") is not None
    except ValueError:  # a half-imported module in sys.modules
        found = False
    if not found:
        raise SpecializeError(
            f"llama-cpp-python is not installed; install it with: {LLAMA_CPP_PIP}"
        )


def cpu_threads() -> int:
    """Cores this process may use (llama-cpp-python's own default is half the cores, which on
    a 2-core machine is one). Standard library only: the child imports it without torch."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------ the protocol


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream: BinaryIO) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 - our own child, over a private pipe


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# ------------------------------------------------------------------------------- grammars

# What a grammar is built from, sent to the child: ("json_schema", schema dict),
# ("choice", tuple of strings) or ("gbnf", grammar text with a ``root`` rule).
Grammar = tuple[str, Any]

_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def gbnf_literal(text: str) -> str:
    r"""``text`` as a quoted GBNF string literal that matches exactly ``text``.

    llama.cpp's grammar parser reads the escapes ``\\``, ``\"``, ``\n``, ``\r``, ``\t`` and
    ``\xHH`` inside a literal and takes any other character (UTF-8 included) as itself.
    llama-cpp-python's own literal escaping (in its JSON-schema converter) leaves backslashes
    unescaped, so it cannot be reused for arbitrary text.
    """
    out = []
    for ch in text:
        if ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def choice_gbnf(choices: Sequence[str]) -> str:
    """A GBNF grammar whose language is exactly ``choices`` (then end of generation)."""
    if not choices or any(not c for c in choices):
        raise ValueError("a choice grammar needs at least one non-empty choice")
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices) + "\n"


# --------------------------------------------------------------------------------- the parent


class LlamaProcess:
    """A GGUF file opened by llama.cpp in a child process: the one way specialize opens one.

    ``purpose`` says what the file is opened for ("checking", "evaluating", "timing"...):
    it is part of the error when the child dies. ``kv_f32`` keeps the attention cache in F32
    instead of llama.cpp's default F16, which is what makes an F32 GGUF agree with PyTorch to
    float32 rounding rather than F16 rounding. ``n_threads`` defaults to every core this
    process may use. Use as a context manager or call :meth:`close`; a child left behind is
    ended when this object is collected.
    """

    def __init__(
        self,
        gguf_path: str | Path,
        n_ctx: int = 2048,
        *,
        logits_all: bool = False,
        n_threads: int | None = None,
        kv_f32: bool = False,
        purpose: str = "using",
    ) -> None:
        self.path = Path(gguf_path)
        self.purpose = purpose
        self._proc: subprocess.Popen[bytes] | None = None
        require_llama_cpp()
        if not self.path.is_file():
            raise SpecializeError("GGUF file not found", path=self.path)
        self._eog: frozenset[int] | None = None
        self._batching = False
        self._stderr = tempfile.TemporaryFile()
        self._start()
        self.info: dict[str, Any] = self._call(
            "open",
            str(self.path),
            n_ctx=n_ctx,
            logits_all=logits_all,
            n_threads=n_threads,
            kv_f32=kv_f32,
            purpose=purpose,
        )
        self.metadata: dict[str, str] = self.info["metadata"]

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "specialize.infer.llama_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def _call(self, op: str, *args: Any, **kw: Any) -> Any:
        proc = self._proc
        if proc is None:
            raise SpecializeError("llama.cpp process already closed", path=self.path)
        if self._batching:
            raise RuntimeError(f"the llama.cpp child is a batching loop now; cannot {op}")
        try:
            _send(proc.stdin, (op, args, kw))  # type: ignore[arg-type]
            status, value = _recv(proc.stdout)  # type: ignore[arg-type]
        except (EOFError, BrokenPipeError, OSError):
            raise self._crashed() from None
        if status == "ok":
            return value
        if status == "user":  # a SpecializeError-style problem with the file
            raise SpecializeError(value, path=self.path)
        raise RuntimeError(f"llama.cpp child failed in {op}: {value}")

    def start_batching(
        self, slots: int, cells: int, n_ctx: int | None = None
    ) -> tuple[BinaryIO, BinaryIO]:
        """Turn the child into a continuous-batching loop for the rest of its life
        (:mod:`specialize.infer.llama_batch`); returns its (input, output) pipes, which the
        caller then owns. ``slots`` sequences at most decode together, sharing ``cells`` KV
        cells, each at most ``n_ctx`` tokens (default: the context the file was opened with).
        No other operation can be called afterwards."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise SpecializeError("llama.cpp process already closed", path=self.path)
        kw = {"slots": int(slots), "cells": int(cells)}
        if n_ctx is not None:
            kw["n_ctx"] = int(n_ctx)
        _send(proc.stdin, ("batch_loop", (), kw))
        self._batching = True
        return proc.stdin, proc.stdout

    def crashed(self) -> NativeCrash:
        """The error for a child that died (waits for it; call once its pipe has closed)."""
        return self._crashed()

    def _crashed(self) -> NativeCrash:
        proc = self._proc
        assert proc is not None
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        self._proc = None
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
        last = f" (last output: {tail[-1][:200]})" if tail else ""
        return NativeCrash(
            f"llama.cpp crashed ({_signal_name(code)}) while {self.purpose} this file{last}",
            path=self.path,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            _send(proc.stdin, None)  # type: ignore[arg-type]
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            proc.kill()
            proc.wait()
        for s in (proc.stdin, proc.stdout):
            if s is not None:
                s.close()
        self._stderr.close()

    def __enter__(self) -> LlamaProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- operations: each is one round trip; loops over tokens happen in the child

    def n_vocab(self) -> int:
        return int(self.info["n_vocab"])

    def token_bos(self) -> int:
        return int(self.info["bos"])

    def token_eos(self) -> int:
        return int(self.info["eos"])

    def eog_tokens(self) -> frozenset[int]:
        """Every end-of-generation id; a scan of the vocabulary, so asked once, when needed."""
        if self._eog is None:
            self._eog = frozenset(self._call("eog_tokens"))
        return self._eog

    def is_eog(self, token: int) -> bool:
        return int(token) in self.eog_tokens()

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._call("tokenize", data, add_bos, special)

    def token_text(self, token: int) -> str:
        return self._call("token_text", int(token))

    def scores(self, ids: Sequence[int]) -> Any:
        """Logits (float32 array, one row per position) of ``ids`` from an empty context."""
        return self._call("scores", [int(t) for t in ids])

    def greedy(self, prompt: Sequence[int], max_new_tokens: int) -> tuple[list[int], bool]:
        """Argmax decoding over raw logits (no sampler), stopping at end-of-generation."""
        return self._call("greedy", [int(t) for t in prompt], int(max_new_tokens))

    def render_template(self, messages: Sequence[dict[str, Any]]) -> str:
        """``messages`` rendered by the GGUF's own chat template, as llama-cpp-python does."""
        return self._call("render_template", [dict(m) for m in messages])

    def forced_stop(self, prompt: Sequence[int], marker: int, banned: Sequence[int], k: int) -> Any:
        """Greedy completion with ``banned`` ids masked for ``k`` tokens, then ``marker``
        forced: returns (finish_reason, completion_tokens, text)."""
        return self._call("forced_stop", [int(t) for t in prompt], int(marker), list(banned), k)

    def chat(
        self, messages: Sequence[dict[str, Any]], *, grammar: Grammar | None = None, **kw: Any
    ) -> dict[str, Any]:
        """``create_chat_completion`` on a fresh context (``reset`` first): ``messages``
        rendered by the GGUF's own chat template. ``grammar`` (see :data:`Grammar`) constrains
        the answer; one llama.cpp cannot build is a :class:`SpecializeError`, not a crash."""
        return self._call("chat", [dict(m) for m in messages], grammar=grammar, **kw)

    def complete(
        self, prompt: Sequence[int], *, grammar: Grammar | None = None, **kw: Any
    ) -> dict[str, Any]:
        """``create_completion`` continuing the token ids ``prompt`` on a fresh context
        (no chat template), with the same ``grammar`` and sampling options as :meth:`chat`."""
        return self._call("complete", [int(t) for t in prompt], grammar=grammar, **kw)

    def timed_generate(self, prompt: Sequence[int], n: int) -> float:
        """Seconds to prefill ``prompt`` and sample exactly ``n`` greedy tokens."""
        return self._call("timed_generate", [int(t) for t in prompt], int(n))


def quantize_in_child(
    src: str | Path,
    out: str | Path,
    ftype: str,
    nthread: int | None,
    imatrix: dict[str, Any] | None = None,
) -> int:
    """``llama_model_quantize(src -> out)`` in a child process; returns llama.cpp's code.
    ``imatrix``: GGUF tensor name -> float32 array of mean squared activations per input
    column (:mod:`specialize.export.gguf.imatrix`), weighting the K-quants' rounding."""
    with _OneShot(src, "quantizing") as child:
        return child._call("quantize", str(src), str(out), ftype, nthread, imatrix)


def system_info_in_child() -> str:
    """llama.cpp's system-info line (the instruction sets the build uses)."""
    child = _OneShot("", "reading system info of")
    try:
        return child._call("system_info")
    finally:
        child.close()


class _OneShot(LlamaProcess):
    """A child with no model open, for operations on files (quantize) or the build."""

    def __init__(self, path: str | Path, purpose: str) -> None:
        self.path = Path(path)
        self.purpose = purpose
        self._proc = None
        self._eog = None
        self._batching = False
        self._stderr = tempfile.TemporaryFile()
        self._start()
        self.info = {}
        self.metadata = {}


# ---------------------------------------------------------------------------------- the child


class _Child:
    """The operations, run inside the child on one ``llama_cpp.Llama``."""

    def __init__(self) -> None:
        import llama_cpp

        self.lc = llama_cpp
        self.llm: Any = None
        self._grammars_ok: set[str] = set()
        self.UserError = _UserError  # raised by the batching loop for one request
        self.n_ctx = 0
        self.kv_f32 = False
        self.threads = 1

    def op_open(self, path: str, *, n_ctx: int, logits_all: bool, n_threads: int | None,
                kv_f32: bool, purpose: str) -> dict[str, Any]:  # fmt: skip
        _maybe_crash(purpose, path)
        lc = self.lc
        kw: dict[str, Any] = {}
        if kv_f32:
            kw.update(type_k=lc.GGML_TYPE_F32, type_v=lc.GGML_TYPE_F32)
        threads = n_threads or cpu_threads()
        self.n_ctx, self.kv_f32, self.threads = n_ctx, kv_f32, threads
        try:
            self.llm = lc.Llama(
                model_path=path, n_ctx=n_ctx, logits_all=logits_all, n_threads=threads,
                verbose=False, **kw,
            )  # fmt: skip
        except ValueError as err:
            raise _UserError(f"llama.cpp cannot load this GGUF: {err}") from None
        return {
            "n_vocab": self.llm.n_vocab(),
            "bos": self.llm.token_bos(),
            "eos": self.llm.token_eos(),
            "metadata": dict(self.llm.metadata),
            "n_threads": threads,
        }

    def op_eog_tokens(self) -> list[int]:
        vocab = self.lc.llama_model_get_vocab(self.llm.model)
        return [t for t in range(self.llm.n_vocab()) if self.lc.llama_vocab_is_eog(vocab, t)]

    def op_tokenize(self, data: bytes, add_bos: bool, special: bool) -> list[int]:
        return list(self.llm.tokenize(data, add_bos=add_bos, special=special))

    def op_token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm._model.token_get_text(token)  # noqa: SLF001 - no public text lookup

    def op_scores(self, ids: list[int]) -> Any:
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def op_greedy(self, prompt: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
        import numpy as np

        lc, llm = self.lc, self.llm
        n_vocab = llm.n_vocab()
        vocab = lc.llama_model_get_vocab(llm.model)
        llm.reset()
        llm.eval(prompt)
        out: list[int] = []
        for _ in range(max_new_tokens):
            last = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            token = int(np.argmax(last))
            if lc.llama_vocab_is_eog(vocab, token):
                return out, True
            out.append(token)
            llm.eval([token])
        return out, False

    def chat_format(self, messages: list[dict[str, Any]]) -> Any:
        """``messages`` through the GGUF's own chat template, as llama-cpp-python's
        ``create_chat_completion`` renders them (a ``ChatFormatterResponse``)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise _UserError("the GGUF has no tokenizer.chat_template")
        fmt = Jinja2ChatFormatter(
            template=template,
            eos_token=self.op_token_text(self.llm.token_eos()),
            bos_token=self.op_token_text(self.llm.token_bos()),
            add_generation_prompt=True,
        )
        return fmt(messages=messages)

    def op_render_template(self, messages: list[dict[str, Any]]) -> str:
        return self.chat_format(messages).prompt

    def op_forced_stop(self, prompt: list[int], marker: int, banned: list[int], k: int) -> Any:
        import numpy as np

        n_prompt = len(prompt)
        ban = np.asarray(sorted(set(banned)), dtype=np.int64)

        def force(input_ids: Any, scores: Any) -> Any:
            out = np.array(scores, copy=True)
            if len(input_ids) - n_prompt < k:
                out[ban] = -np.inf
            else:
                out[:] = -np.inf
                out[marker] = 0.0
            return out

        res = self.llm.create_completion(
            prompt=prompt, max_tokens=k + 4, temperature=0.0, logits_processor=[force]
        )
        choice = res["choices"][0]
        return choice["finish_reason"], int(res["usage"]["completion_tokens"]), choice["text"]

    def op_chat(
        self, messages: list[dict[str, Any]], *, grammar: Grammar | None = None, **kw: Any
    ) -> dict[str, Any]:
        built = self._grammar(grammar)
        self.llm.reset()
        return self.llm.create_chat_completion(messages=messages, grammar=built, **kw)

    def op_complete(
        self, prompt: list[int], *, grammar: Grammar | None = None, **kw: Any
    ) -> dict[str, Any]:
        built = self._grammar(grammar)
        self.llm.reset()
        return self.llm.create_completion(prompt=prompt, grammar=built, **kw)

    def _grammar(self, spec: Grammar | None) -> Any:
        """A ``LlamaGrammar`` for ``spec`` (see :meth:`grammar_text`)."""
        text = self.grammar_text(spec)
        if text is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        return LlamaGrammar.from_string(text)

    def grammar_text(self, spec: Grammar | None) -> str | None:
        """The GBNF text for ``spec``, proven parseable by llama.cpp first: llama-cpp-python
        hands the text to ``llama_sampler_init_grammar`` unchecked and adds whatever comes back
        to the sampler chain, so a grammar it cannot parse (NULL) would crash the child, and a
        JSON schema its converter rejects would silently become "any JSON"."""
        if spec is None:
            return None
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        kind, arg = spec
        if kind == "json_schema":
            import json

            try:
                text = json_schema_to_gbnf(json.dumps(arg))
            except Exception as err:  # noqa: BLE001 - AssertionError, KeyError, TypeError...
                why = " ".join(str(err).split())[:200] or type(err).__name__
                raise _UserError(
                    f"llama.cpp cannot turn this JSON schema into a grammar: {why}"
                ) from None
        elif kind == "choice":
            text = choice_gbnf(arg)
        elif kind == "gbnf":
            text = str(arg)
        else:
            raise _UserError(f"unknown grammar kind {kind!r}")
        if text not in self._grammars_ok:
            vocab = self.lc.llama_model_get_vocab(self.llm.model)
            sampler = self.lc.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
            if not sampler:
                raise _UserError(f"llama.cpp cannot parse the {kind} grammar (GBNF)")
            self.lc.llama_sampler_free(sampler)
            self._grammars_ok.add(text)
        return text

    def op_timed_generate(self, prompt: list[int], n: int) -> float:
        import time

        self.llm.reset()
        got = 0
        t0 = time.perf_counter()
        # Llama.generate yields sampled tokens without stopping at end-of-turn (stopping is
        # create_completion's job), so exactly n tokens are produced.
        for _ in self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            got += 1
            if got == n:
                break
        return time.perf_counter() - t0

    def op_quantize(
        self, src: str, out: str, ftype: str, nthread: int | None, imatrix: dict | None = None
    ) -> int:
        import ctypes

        import numpy as np

        _maybe_crash("quantizing", out)
        params = self.lc.llama_model_quantize_default_params()
        params.ftype = getattr(self.lc, ftype)
        if nthread:
            params.nthread = int(nthread)
        keep = []  # the arrays must outlive the call
        if imatrix:
            entry = self.lc.llama_model_imatrix_data
            table = (entry * (len(imatrix) + 1))()  # a {NULL} entry ends the list
            for i, (name, values) in enumerate(sorted(imatrix.items())):
                arr = np.ascontiguousarray(values, dtype=np.float32)
                keep += [arr, name.encode()]
                table[i].name = keep[-1]
                table[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                table[i].size = arr.size
            params.imatrix = table
        return int(self.lc.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params)))

    def op_system_info(self) -> str:
        return self.lc.llama_print_system_info().decode("utf-8", "replace").strip()


class _UserError(Exception):
    """A problem with the file, reported to the parent as a SpecializeError."""


def _maybe_crash(purpose: str, path: str) -> None:
    """The test hook: ``PURPOSE:SUBSTRING[:SIGNAL]`` (SIGSEGV by default)."""
    parts = os.environ.get(CRASH_ENV, "").split(":")
    if len(parts) < 2:
        return
    want, needle = parts[0], parts[1]
    sig = getattr(signal, parts[2], signal.SIGSEGV) if len(parts) > 2 else signal.SIGSEGV
    if want in ("*", purpose) and needle in Path(path).name:
        os.kill(os.getpid(), sig)


def _serve() -> None:
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything llama.cpp prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer
    child = _Child()
    while True:
        try:
            msg = _recv(proto_in)
        except EOFError:
            return
        if msg is None:
            return
        op, args, kw = msg
        if op == "batch_loop":  # the rest of this child's life: see llama_batch
            from specialize.infer.llama_batch import serve_batches

            def send(obj: Any) -> None:
                _send(proto_out, obj)

            kw.setdefault("n_ctx", child.n_ctx)
            serve_batches(child, proto_in, send, kv_f32=child.kv_f32, threads=child.threads, **kw)
            return
        try:
            result = ("ok", getattr(child, f"op_{op}")(*args, **kw))
        except _UserError as err:
            result = ("user", str(err))
        except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
            result = ("error", f"{type(err).__name__}: {err}")
        _send(proto_out, result)


if __name__ == "__main__":
    _serve()
