"""Command line: one subcommand per stage, each a thin call into a stage function.

    specialize run [CONFIG]        the main job (default: the bundled space-QA example)
    specialize check [CONFIG]      validate config and data (splits, leakage, chat format)
    specialize eval TARGET         evaluate a run's base and tuned models, or a suite config
    specialize export RUN_DIR      GGUF F16 + quantized files with round-trip checks
    specialize card RUN_DIR        rewrite MODEL_CARD.md from a run's files
    specialize generate MODEL --input P.jsonl --output A.jsonl [--schema S.json | --choice
                                   a,b | --regex R]   answer prompts, optionally constrained
    specialize data generate CONFIG   documents -> synthetic instruction data (the synth
                                   section), resumable: rerun after a crash to go on
    specialize config-docs         every config field with its type, default and meaning

Bad input ends with one line on stderr naming the file, line or field, and exit code 2; a
crash of llama.cpp (run in a child process) ends with one line and exit code 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from specialize.errors import SpecializeError
from specialize.infer.llama_process import NativeCrash

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "space" / "config.yaml"


def default_config() -> Path:
    for candidate in (EXAMPLE, Path.cwd() / "examples" / "space" / "config.yaml"):
        if candidate.is_file():
            return candidate
    raise SpecializeError(
        "no config given and the bundled example config was not found", path=EXAMPLE
    )


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SpecializeError(f"--set needs KEY=VALUE, got '{pair}'", field="--set")
        key, value = pair.split("=", 1)
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not valid YAML"
            raise SpecializeError(f"--set {key}: {problem} in '{value}'", field="--set") from None
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from specialize.config import load_config
    from specialize.pipeline import run

    cfg = load_config(args.config or default_config(), _overrides(args.set))
    run_dir = run(cfg, force=args.force, progress=not args.no_progress, resume=args.resume)
    print(run_dir)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from specialize.config import load_config
    from specialize.data.prepare import prepare_data
    from specialize.models.load import load_tokenizer, resolve

    cfg = load_config(args.config or default_config(), _overrides(args.set))
    tokenizer = load_tokenizer(resolve(cfg.model.base, cfg._base_dir))
    stats = prepare_data(cfg, tokenizer).stats(cfg)
    print(
        yaml.safe_dump(
            {k: stats[k] for k in ("records", "splits", "leakage", "tokens", "overlength")},
            sort_keys=False,
        ).strip()
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from specialize.evaluate.runner import EvalRequest, run_eval
    from specialize.report.eval_report import write_eval_report

    out = run_eval(
        EvalRequest(
            target=Path(args.target),
            run_dir=Path(args.run) if args.run else None,
            suite=args.suite,
            out=Path(args.out) if args.out else None,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            bertscore=not args.no_bertscore,
            endpoint=args.endpoint,
            endpoint_model=args.endpoint_model,
            judge_url=args.judge,
            judge_model=args.judge_model,
            gguf=args.gguf,
            fresh=args.fresh,
            progress=not args.no_progress,
            breakdown_by=args.breakdown_by or [],
        )
    )
    print(write_eval_report(out))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from specialize.export.export_run import export_run

    types = tuple(t.strip().lower() for t in args.types.split(",") if t.strip())
    report = export_run(
        Path(args.run_dir), types, checks=not args.no_checks, imatrix_tokens=args.imatrix_tokens
    )
    print(yaml.safe_dump(report.get("files", {}), sort_keys=False).strip())
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from specialize.report.card import write_card

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise SpecializeError("not a run directory (no config.yaml)", path=run_dir)
    print(write_card(run_dir))
    manifest = run_dir / "manifest.json"
    if manifest.is_file():  # keep the card's sha256 in the manifest true
        from specialize.io import read_json
        from specialize.report.manifest import write_manifest

        write_manifest(run_dir, read_json(manifest).get("inputs", {}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from specialize.infer.files import GenerateOptions, generate_file, load_constraint

    constraint = load_constraint(
        Path(args.schema) if args.schema else None, args.regex, args.choice
    )
    opts = GenerateOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        retries=args.retries,
        batch_size=args.batch_size,
        chat_format=args.chat_format,
        model_name=args.model_name,
        api_key=os.environ.get("SPECIALIZE_API_KEY"),
    )
    counts = generate_file(
        args.model, Path(args.input), Path(args.output), constraint, opts, not args.no_progress
    )
    logging.getLogger("specialize").info(
        "%d answers -> %s (%d valid, %d invalid, %d errors, %d retries, %d schema fallbacks)",
        counts.requests,
        args.output,
        counts.valid,
        counts.invalid,
        counts.errors,
        counts.retries,
        counts.fallbacks,
    )
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from specialize.config import load_config
    from specialize.data.synth_run import check_sources, run_synth, synth_dir
    from specialize.models.load import load_tokenizer, resolve
    from specialize.report.synth_report import write_synth_report

    cfg = load_config(args.config, _overrides(args.set))
    if cfg.synth is None:
        raise SpecializeError("the config has no synth section", path=args.config, field="synth")
    tokenizer = None
    if cfg.synth.chunk.unit == "tokens":
        tokenizer = load_tokenizer(resolve(cfg.model.base, cfg._base_dir))
    sources = check_sources(cfg, tokenizer)  # bad files, tasks and schemas: before any model
    out_dir = Path(args.out) if args.out else synth_dir(cfg)
    run_synth(
        cfg, sources=sources, tokenizer=tokenizer, out_dir=out_dir, progress=not args.no_progress
    )
    write_synth_report(out_dir)
    print(out_dir)
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    from specialize.config import config_docs

    print(config_docs())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from specialize.serve.app import run_server
    from specialize.serve.registry import open_runs
    from specialize.serve.settings import ServeSettings

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("SPECIALIZE_API_KEY") or None,
        max_tokens=args.max_tokens,
        max_pending=args.max_pending,
        timeout_s=args.timeout,
        batch_size=args.batch_size,
        max_context=args.max_context,
    )
    settings.check()  # an unsafe bind is refused before any model loads
    reg = open_runs(
        [Path(r) for r in args.runs],
        batch_size=settings.batch_size,
        gguf=not args.no_gguf,
        max_context=settings.max_context,
    )
    log = logging.getLogger("specialize")
    log.info("serving %s on http://%s:%d/v1", ", ".join(reg.variants), args.host, args.port)
    run_server(reg, settings)
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    from specialize.client import Tasks
    from specialize.serve.task_api import as_json

    raw = args.input
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SpecializeError(
                f"cannot read --input: {err}", path=Path(args.input[1:])
            ) from None
    if not args.run.startswith(("http://", "https://")):
        from specialize.serve.registry import read_run

        catalog = read_run(Path(args.run)).catalog  # bad names and inputs before any model loads
        if catalog is None:
            raise SpecializeError("the run has no task catalog (tasks.json)", path=Path(args.run))
        _task_inputs(catalog, args.name, raw)
    with Tasks(args.run, model=args.model, max_tokens=args.max_tokens) as tasks:
        inputs = _task_inputs(tasks.catalog, args.name, raw)
        value = tasks.call(args.name, **inputs)
    print(json.dumps(as_json(value), ensure_ascii=False, indent=2))
    return 0


def _task_inputs(catalog: Any, name: str, raw: str) -> dict[str, Any]:
    """``--input`` as the task's inputs: a JSON object, or the text of a one-input task."""
    from specialize.serve.task_api import NEEDS, TaskInputs

    if name not in catalog:
        raise SpecializeError(f"no task '{name}' (tasks: {', '.join(catalog.names)})", field="name")
    need = NEEDS[catalog[name].input_kind]
    if raw.lstrip().startswith("{"):
        try:
            inputs = json.loads(raw)
        except ValueError as err:
            raise SpecializeError(f"--input is not JSON: {err}", field="input") from None
    elif len(need) == 1:
        inputs = {need[0]: raw}  # a single-input task takes the text as is
    else:
        raise SpecializeError(
            f"task {name} needs {' and '.join(need)}: give --input as a JSON object", field="input"
        )
    if not isinstance(inputs, dict):
        raise SpecializeError("--input must be a JSON object", field="input")
    try:
        TaskInputs.model_validate(inputs)
    except ValueError as err:
        raise SpecializeError(f"--input: {err.errors()[0]['msg']}", field="input") from None
    return inputs


def _serve_parsers(sub: Any) -> None:
    sp = sub.add_parser("serve", help="OpenAI-compatible server over run directories")
    sp.add_argument("runs", nargs="+", help="run directories (their adapters and GGUF files)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (others need a key)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--api-key", help="required bearer token (or SPECIALIZE_API_KEY)")
    sp.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens accepted")
    sp.add_argument("--max-pending", type=int, default=64, help="queue bound (then 429)")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    sp.add_argument("--batch-size", type=int, default=16, help="rows decoded together")
    sp.add_argument("--max-context", type=int, help="prompt + max_tokens bound")
    sp.add_argument("--no-gguf", action="store_true", help="serve only the HF variants")
    sp.set_defaults(fn=cmd_serve)
    tp = sub.add_parser("task", help="call a task of a run's catalog (typed answer as JSON)")
    tp.add_argument("run", help="run directory, or the URL of a specialize serve")
    tp.add_argument("name", help="task name (bullets, qa_pairs, retrieval ...)")
    tp.add_argument("--input", required=True, help="text, a JSON object of inputs, or @FILE")
    tp.add_argument("--model", help="variant (default: the tuned model)")
    tp.add_argument("--max-tokens", type=int, default=256)
    tp.set_defaults(fn=cmd_task)


def _export_parser(sub: Any) -> None:
    sp = sub.add_parser("export", help="GGUF (F16 + quantized) from a run, with checks")
    sp.add_argument("run_dir")
    sp.add_argument(
        "--types", default="q8_0,q4_k_m", help="quantized types (q8_0,q6_k,q5_k_m,q4_k_m)"
    )
    sp.add_argument(
        "--imatrix-tokens",
        type=int,
        default=32768,
        help="training tokens for the K-quants' importance matrix (0: none)",
    )
    sp.add_argument("--no-checks", action="store_true", help="skip the round-trip checks")
    sp.set_defaults(fn=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specialize", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (
        ("run", cmd_run, "run every stage of a config"),
        ("check", cmd_check, "validate a config and its data without training"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("config", nargs="?", help="YAML config (default: bundled example)")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set train.max_steps=10",
        )
        sp.set_defaults(fn=fn)
        if name == "run":
            sp.add_argument(
                "--force",
                action="store_true",
                help="replace an existing run directory of the same name",
            )
            sp.add_argument("--no-progress", action="store_true", help="no progress bars")
            sp.add_argument(
                "--resume",
                action="store_true",
                help="continue an interrupted run: finished stages (adapter, evaluations, merge, "
                "GGUF files) are reused, training continues from its last checkpoint",
            )
    sp = sub.add_parser("eval", help="evaluate a run's variants or a suite config")
    sp.add_argument("target", help="run directory, or a suite config (examples/suites/*.yaml)")
    sp.add_argument("--suite", help="with a run directory: evaluate on this external suite")
    sp.add_argument("--run", help="with a suite config: also evaluate this run's tuned model")
    sp.add_argument("--out", help="report folder (default: RUN/eval[/SUITE] or runs/eval/SUITE)")
    sp.add_argument("--limit", type=int, help="evaluate only the first N records")
    sp.add_argument("--max-new-tokens", type=int, help="generation budget per answer")
    sp.add_argument("--batch-size", type=int, help="rows decoded together")
    sp.add_argument("--no-bertscore", action="store_true", help="skip BERTScore")
    sp.add_argument("--endpoint", help="also evaluate an OpenAI-compatible server (base URL)")
    sp.add_argument("--endpoint-model", help="model name to ask the endpoint for")
    sp.add_argument("--judge", metavar="URL", help="LLM judge: an OpenAI-compatible server")
    sp.add_argument("--judge-model", help="model name to ask the judge endpoint for")
    sp.add_argument("--breakdown-by", action="append", help="metadata field (repeatable)")
    sp.add_argument(
        "--gguf", action="store_true", help="also evaluate RUN/gguf/*.gguf through llama.cpp"
    )
    sp.add_argument("--fresh", action="store_true", help="discard answers saved by a stopped run")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(fn=cmd_eval)
    _export_parser(sub)
    sp = sub.add_parser("card", help="rewrite MODEL_CARD.md from a run directory")
    sp.add_argument("run_dir")
    sp.set_defaults(fn=cmd_card)
    sp = sub.add_parser("generate", help="answer a JSONL of prompts, optionally constrained")
    sp.add_argument("model", help="URL, .gguf file, run directory, model folder or bundled:NAME")
    sp.add_argument("--input", required=True, help='JSONL: {"prompt": ...} or {"messages": ...}')
    sp.add_argument("--output", required=True, help="answers JSONL (+ .stats.json beside it)")
    sp.add_argument("--schema", help="JSON schema file the answers must match")
    sp.add_argument("--regex", help="regular expression the answers must match")
    sp.add_argument("--choice", help="comma-separated answers, one of which must be given")
    sp.add_argument("--max-new-tokens", type=int, default=256)
    sp.add_argument("--temperature", type=float, default=0.0)
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--retries", type=int, default=2, help="re-asks of an invalid answer")
    sp.add_argument("--batch-size", type=int, default=16, help="rows decoded together (HF)")
    sp.add_argument("--chat-format", default="chatml", help="for a model folder (HF)")
    sp.add_argument("--model-name", default="model", help="model id sent to a server")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(fn=cmd_generate)
    _data_parser(sub)
    sp = sub.add_parser("config-docs", help="list every config field")
    sp.set_defaults(fn=cmd_config_docs)
    return p


def _data_parser(sub: Any) -> None:
    sp = sub.add_parser("data", help="data commands: generate synthetic instruction data")
    data_sub = sp.add_subparsers(dest="data_command", required=True)
    gp = data_sub.add_parser("generate", help="documents -> synthetic records (config: synth)")
    gp.add_argument("config", help="YAML config with a synth section")
    gp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    gp.add_argument("--out", help="output folder (default: OUTPUT_DIR/NAME.synth)")
    gp.add_argument("--no-progress", action="store_true", help="no progress bars")
    gp.set_defaults(fn=cmd_data_generate)
    _serve_parsers(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="specialize: %(message)s", stream=sys.stderr)
    logging.getLogger("specialize").setLevel(logging.INFO)
    try:
        return args.fn(args)
    except NativeCrash as e:  # not the user's input: a native library died in its child
        print(f"specialize: error: {e.one_line()}", file=sys.stderr)
        return 3
    except SpecializeError as e:
        print(f"specialize: error: {e.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("specialize: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
