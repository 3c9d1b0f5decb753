"""MODEL_CARD.md, written only from the files of a run directory.

Nothing here computes or types a number: every figure is read from config.yaml,
data/stats.json, train/history.json, eval/*/metrics.json, eval/compare.json,
export/merge_check.json, timings.json and env.json (and, for records generated from
documents, data/synth_stats.json, data/synth_samples.jsonl and tasks.json: see
``synth_card.py``), so the card can be regenerated
(``specialize card RUN_DIR``) and always agrees with the artifacts beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from specialize.io import read_json, write_text
from specialize.report.per_task import task_table
from specialize.report.synth_card import synth_section


def _load(run: Path, rel: str) -> Any:
    p = run / rel
    return read_json(p) if p.exists() else None


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(d: dict[str, float], digits: int = 4) -> str:
    return f"{d['delta']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def _overlength(stats: dict[str, Any]) -> str:
    counts = stats.get("overlength", {})
    trunc = sum(c.get("truncated", 0) for c in counts.values())
    dropped = sum(c.get("dropped_too_long", 0) for c in counts.values())
    chunked = sum(c.get("split_into_chunks", 0) for c in counts.values())
    if chunked:
        return f"{chunked} extra chunks from documents longer than a row"
    return f"{trunc} truncated, {dropped} dropped"


def render_card(run: Path) -> str:
    """The card's Markdown: one section per part of the run, each from that part's files."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    stats = _load(run, "data/stats.json") or {}
    hist = _load(run, "train/history.json") or {}
    adapted = _load(run, "train/adapted_modules.json") or {}
    env = _load(run, "env.json") or {}
    name = cfg["name"]
    L = [
        f"# {name}",
        "",
        f"LoRA adapter for `{cfg['model']['base']}`, trained by "
        f"[specialize](https://pypi.org/project/specialize/) on `{stats.get('source', '?')}`. "
        "Every number on this card is read from the files of this run directory.",
        "",
    ]
    L += _base_model_section(cfg, adapted)
    L += _data_section(stats)
    L += synth_section(run)
    L += _training_section(cfg, hist, adapted)
    L += _results_section(run, cfg)
    L += _merge_section(_load(run, "export/merge_check.json"))
    L += edge_section(run, name)
    L += _hardware_section(env, _load(run, "timings.json") or {})
    L += _versions_section(env)
    L += _how_to_load(run)
    return "\n".join(L)


def _base_model_section(cfg: dict[str, Any], adapted: dict[str, Any]) -> list[str]:
    return [
        "## Base model",
        "",
        "| | |",
        "|---|---|",
        f"| base | `{cfg['model']['base']}` |",
        f"| dtype | {cfg['model']['dtype']} |",
        f"| chat format | {cfg['chat']['format']} |",
        f"| parameters | {adapted.get('parameters', {}).get('total', '?'):,} |"
        if adapted
        else "| parameters | ? |",
        "",
    ]


def _data_section(stats: dict[str, Any]) -> list[str]:
    L = ["## Data and splits", ""]
    sp = stats.get("splits", {})
    tok = stats.get("tokens", {})
    L += ["| split | records | tokens | trained tokens |", "|---|---:|---:|---:|"]
    for s in ("train", "validation", "test"):
        t = tok.get(s, {})
        L.append(
            f"| {s} | {sp.get(s, 0)} | {t.get('tokens', '?')} | {t.get('target_tokens', '?')} |"
        )
    L.append("")
    if "by_kind" in stats:
        kinds = sorted({k for v in stats["by_kind"].values() for k in v})
        L += [
            "Records by kind:",
            "",
            "| split | " + " | ".join(kinds) + " |",
            "|---|" + "---:|" * len(kinds),
        ]
        for s, counts in stats["by_kind"].items():
            L.append(f"| {s} | " + " | ".join(str(counts.get(k, 0)) for k in kinds) + " |")
        L.append("")
    read = stats.get("read", {})
    lk = stats.get("leakage", {})
    return L + [
        f"Removed while reading: {read.get('removed_empty_rows', 0)} empty rows. "
        f"Over the length limit: {_overlength(stats)}. "
        f"Cross-split leakage check (threshold {lk.get('threshold')}): "
        f"{lk.get('exact', '?')} exact, {lk.get('near', '?')} near-duplicate pairs.",
        "",
        "Split rule (deterministic, seeded hash of each record's group):",
        "",
        "```yaml",
        yaml.safe_dump(stats.get("split_rule", {}), sort_keys=False).strip(),
        "```",
        "",
    ]


def _training_section(
    cfg: dict[str, Any], hist: dict[str, Any], adapted: dict[str, Any]
) -> list[str]:
    L = ["## LoRA and training", "", "| hyperparameter | value |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in _hyperparameters(cfg, hist, adapted)]
    if hist:
        va = hist.get("validation", [])
        L += [
            "",
            f"Training: {hist.get('steps')} steps, {hist.get('tokens', 0):,} tokens in "
            f"{hist.get('wall_s', 0):.1f} s ({hist.get('tokens_per_s', 0):.0f} tokens/s). "
            f"Validation loss {va[0]['loss']:.4f} before training, {va[-1]['loss']:.4f} "
            "after."
            if va
            else "",
            "",
            "![loss curve](plots/loss.png)",
            "",
        ]
    return L


def _hyperparameters(
    cfg: dict[str, Any], hist: dict[str, Any], adapted: dict[str, Any]
) -> list[tuple[str, Any]]:
    lora, tr = cfg["lora"], cfg["train"]
    warmup = (
        f"{tr['warmup_steps']} steps"
        if tr.get("warmup_steps") is not None
        else f"{tr['warmup_ratio']:.0%} of steps"
    )
    steps = (
        f"{hist.get('steps', '?')} (max_steps {tr['max_steps']})"
        if tr.get("max_steps")
        else f"{hist.get('steps', '?')} ({tr['epochs']} epochs)"
    )
    return [
        ("rank r", lora["r"]),
        ("alpha", lora["alpha"]),
        ("dropout", lora["dropout"]),
        ("targets", lora["targets"]),
        ("adapted modules", len(adapted.get("targets", []))),
        ("trainable parameters", f"{adapted.get('parameters', {}).get('trainable', 0):,}"),
        ("optimizer", "AdamW"),
        ("learning rate", tr["lr"]),
        ("schedule", f"{tr['scheduler']}, warmup {warmup}"),
        ("mixed precision", _precision(tr, hist)),
        ("packing", "yes" if cfg.get("mode") == "cpt" or tr.get("packing") else "no"),
        (
            "DoRA / rsLoRA / QLoRA",
            f"{lora.get('dora', False)} / {lora.get('rslora', False)} / "
            f"{lora.get('quantize', 'none')}",
        ),
        ("weight decay", tr["weight_decay"]),
        ("max grad norm", tr["max_grad_norm"]),
        ("batch size x grad accumulation", f"{tr['batch_size']} x {tr['grad_accum']}"),
        ("steps run", steps),
        ("max sequence length", cfg["chat"]["max_seq_len"]),
        ("seed", tr["seed"]),
    ]


def _quantized(run: Path, cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each ``eval/gguf-*/metrics.json``, in the config's order (q8_0 before q4_k_m: falling
    precision)."""
    order = [f"gguf-{t}" for t in cfg.get("export", {}).get("gguf_types", [])]
    found = {p.parent.name: p for p in (run / "eval").glob("gguf-*/metrics.json")}
    ranked = sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))
    return {n: read_json(found[n]) for n in ranked}


def _results_section(run: Path, cfg: dict[str, Any]) -> list[str]:
    """Base against tuned (and the GGUF files against tuned) on the held-out split."""
    base = _load(run, "eval/base/metrics.json")
    tuned = _load(run, "eval/tuned/metrics.json")
    comp = _load(run, "eval/compare.json")
    if not (base and tuned and comp):
        return []
    if any(k in base for k in ("f1", "accuracy", "schema_valid")):
        L = _answer_results(run, cfg, base, tuned, comp)
    else:
        L = _perplexity_results(base, tuned, comp)
    if "f1" in base or "schema_valid" in base:
        L += _squad_notes(cfg, comp, base)
    return L


def _results_head(comp: dict[str, Any]) -> list[str]:
    return [f"## Results ({comp.get('split', 'test')} split, {comp['n']} records)", ""]


def _answer_results(
    run: Path, cfg: dict[str, Any], base: dict[str, Any], tuned: dict[str, Any], comp: dict
) -> list[str]:
    from specialize.report.eval_report import results_table

    quantized = _quantized(run, cfg)
    comp_gguf = _load(run, "eval/compare_gguf.json")
    d = comp["deltas"]
    shaped = comp if "vs_reference" in comp else comp | {"vs_reference": {"tuned": d}}
    shown = {"base": base, "tuned": tuned} | quantized
    against = {n: comp_gguf for n in quantized} if comp_gguf else {}
    L = _results_head(comp) + results_table(shown, shaped | {"reference": "base"}, against)
    per_task = task_table({"base": base, "tuned": tuned}, shaped | {"reference": "base"})
    if per_task:
        L += ["", *per_task[:-1]]
    if quantized:
        L += [
            "",
            "The GGUF columns are the exported files answering through llama.cpp with "
            "their own chat template; their deltas are against the tuned model they "
            "were made from (paired on the same records). They have no loss or "
            "perplexity column: those are computed by PyTorch on the HF model.",
        ]
    return L


def _perplexity_results(
    base: dict[str, Any], tuned: dict[str, Any], comp: dict[str, Any]
) -> list[str]:
    d = comp["deltas"]
    change = tuned["perplexity"] / base["perplexity"] - 1
    return _results_head(comp) + [
        "| metric | base | tuned | delta (95% CI, paired bootstrap) |",
        "|---|---:|---:|---|",
        f"| loss (all tokens) | {_fmt(base['loss'])} | {_fmt(tuned['loss'])} | {_ci(d['loss'])} |",
        f"| perplexity | {_fmt(base['perplexity'], 3)} | "
        f"{_fmt(tuned['perplexity'], 3)} | "
        f"{_ci(d['perplexity'], 3) if 'perplexity' in d else ''} |",
        "",
        f"Held-out perplexity changed by {change:+.1%} over {base.get('tokens', '?')}"
        " tokens of documents never trained on.",
        "",
        "![metrics](plots/metrics.png)",
        "",
    ]


def _squad_notes(cfg: dict[str, Any], comp: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """How answers were scored, the breakdowns, and where the answers are."""
    notes = []
    if "f1" in base:
        notes.append(
            "EM and F1 use SQuAD v1.1 answer normalisation; greedy decoding, at most "
            f"{cfg['eval']['max_new_tokens']} new tokens."
        )
    if "schema_valid" in base:
        notes.append(
            "Generated-data tasks are scored by their task: schema-valid is the share of "
            "answers the task's JSON schema accepts; field F1 is a soft set F1 of the answer's "
            "items (bullets, question-answer pairs, triplets) against the reference's, each "
            "item matched to its best token-F1 counterpart, 0 for an invalid answer; passage "
            "index accuracy is the share of retrieval answers naming the right passage."
        )
    L = [x for note in notes for x in ("", note)] + ["", "![metrics](plots/metrics.png)", ""]
    for field, by in comp.get("breakdowns", {}).items():
        if field == "task" and "by_task" in comp:
            continue  # the per-task table above has these and more
        L += [
            f"### By {field}",
            "",
            f"| {field} | n | base EM | tuned EM | base F1 | tuned F1 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, b in by["base"].items():
            t = by["tuned"][key]
            L.append(
                f"| {key} | {b['n']} | {_num(b.get('exact_match'))} | "
                f"{_num(t.get('exact_match'))} | {_num(b.get('f1'))} | {_num(t.get('f1'))} |"
            )
        L.append("")
    return L + [
        "Per-record predictions: `eval/base/predictions.jsonl`, "
        "`eval/tuned/predictions.jsonl`, side by side in `eval/side_by_side.jsonl`.",
        "",
    ]


def _num(x: Any) -> str:
    """Three decimals; "-" for a metric a group lacks (NaN or missing)."""
    return "-" if x is None or x != x else f"{x:.3f}"


def _merge_section(merge: dict[str, Any] | None) -> list[str]:
    if merge and merge.get("saved_dtype") in ("bfloat16", "float16"):
        return [
            "## Export",
            "",
            f"Merged model (LoRA folded in) in `merged/`, saved in {merge['saved_dtype']}. "
            f"Before the cast, its logits on {merge['prompts']} prompts differed from the "
            f"adapter model's by at most {merge['max_abs_diff_before_cast']:.2e} (tolerance "
            f"{merge['atol']:g} + {merge.get('rtol', 0):g} x largest |logit| "
            f"{merge.get('max_abs_adapter_logit', float('nan')):.1f}). Reloaded with "
            f"`AutoModelForCausalLM`, the saved model differs by at most "
            f"{merge['max_abs_diff_vs_adapter']:.2e} (the cast) and agrees on the next token at "
            f"{merge['top1_agreement_saved']:.1%} of positions; it differs from the base model "
            f"by {merge['max_abs_diff_vs_base']:.2e}.",
            "",
        ]
    if merge:
        return [
            "## Export",
            "",
            f"Merged model (LoRA folded in) in `merged/`. Reloaded with "
            f"`AutoModelForCausalLM` in {merge.get('dtype', 'float32')}, its logits on "
            f"{merge['prompts']} prompts differ from the "
            f"adapter model's by at most {merge['max_abs_diff_vs_adapter']:.2e} (largest "
            f"|logit| {merge.get('max_abs_adapter_logit', float('nan')):.1f}; tolerance "
            f"{merge['atol']:g} + {merge.get('rtol', 0):g} x largest |logit|) and from the base "
            "model's by "
            f"{merge['max_abs_diff_vs_base']:.2e}.",
            "",
        ]
    return []


def _hardware_section(env: dict[str, Any], timings: dict[str, Any]) -> list[str]:
    hw = env.get("hardware", {})
    L = [
        "## Hardware and time",
        "",
        f"{hw.get('cpu', '?')}, {hw.get('cpu_cores', '?')} cores "
        f"({hw.get('torch_threads', '?')} torch threads), {hw.get('memory_gib', '?')} GiB "
        f"RAM, GPU: {hw.get('gpu') or 'none'}.",
        "",
        "| stage | wall time (s) |",
        "|---|---:|",
    ]
    for k, v in timings.get("stages_s", {}).items():
        L.append(f"| {k} | {v:.1f} |")
    return L + [f"| **total** | **{timings.get('total_s', 0):.1f}** |", ""]


def _versions_section(env: dict[str, Any]) -> list[str]:
    ver = env.get("versions", {})
    L = ["## Framework versions", "", ", ".join(f"{k} {v}" for k, v in ver.items()), ""]
    stack = env.get("installed", {})
    build = stack.get("llama_cpp_build")
    if build:
        L += [
            f"llama.cpp build: CPU tier `{build.get('tier')}` "
            f"(`{' '.join(build.get('cmake_args') or [])}`); llama.cpp reports: "
            f"`{build.get('system_info')}`.",
            "",
        ]
    if "lock_sha256" in stack:
        drift = stack.get("differs_from_lock") or {}
        what = (
            "every locked package at its locked version"
            if not drift
            else f"{len(drift)} package(s) differ from the lock: "
            + ", ".join(f"{k} {v['installed']} (lock {v['lock']})" for k, v in drift.items())
        )
        L += [
            f"Installed against `requirements.lock` (sha256 {stack['lock_sha256'][:12]}): "
            f"{what}; full list in `env.json`.",
            "",
        ]
    return L


def _how_to_load(run: Path) -> list[str]:
    meta = _load(run, "adapter/specialize.json") or {}
    L = [
        "## How to load",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
    ]
    files = meta.get("base_files", "BASE")
    if str(files).endswith(".gguf"):
        folder, gguf = str(Path(files).parent), Path(files).name
        L += [
            f'base = AutoModelForCausalLM.from_pretrained("{folder}", gguf_file="{gguf}")',
        ]
        if (run / "merged" / "tokenizer.json").is_file():
            # transformers' GGUF loader drops the file's pre-tokenizer (e.g. SmolLM2's digit
            # splitting); the merged folder's tokenizer.json is the one training used.
            L += [
                "# the tokenizer training used (transformers' GGUF loader drops its "
                "pre-tokenizer):",
                'tok = AutoTokenizer.from_pretrained("merged")',
            ]
        else:
            L += [
                "# or specialize.models.load.load_tokenizer, which restores its pre-tokenizer",
                f'tok = AutoTokenizer.from_pretrained("{folder}", gguf_file="{gguf}")',
            ]
    else:
        L += [
            f'base = AutoModelForCausalLM.from_pretrained("{files}")',
            f'tok = AutoTokenizer.from_pretrained("{files}")',
        ]
    return L + [
        'model = PeftModel.from_pretrained(base, "adapter")',
        "",
        "# or the merged model, no PEFT needed:",
        'merged = AutoModelForCausalLM.from_pretrained("merged")',
        "```",
        "",
    ]


def _mb(n: int | None) -> str:
    return f"{n / 1e6:.1f} MB" if n else "-"


def edge_section(run: Path, name: str) -> list[str]:
    """Sizes, CPU speed and round-trip checks of the exported GGUFs, and how to run them."""
    sizes = _load(run, "export/sizes.json")
    checks = (_load(run, "export/gguf_checks.json") or {}).get("checks")
    speed = (_load(run, "export/speed.json") or {}).get("artifacts", {})
    if not sizes:
        return []
    L = _edge_table(sizes, speed, name)
    files = _load(run, "export/gguf_files.json") or {}
    weighted = [t.upper() for t, f in files.items() if isinstance(f, dict) and f.get("imatrix")]
    if weighted:
        L += [
            "",
            f"{', '.join(weighted)} rounded with an importance matrix of the run's own training "
            "data (`gguf/imatrix.dat`, llama.cpp's format: the mean squared activation of "
            "each input column), so the columns the tuned model uses keep their precision.",
        ]
    if checks:
        L += _edge_checks(checks)
    pick = _load(run, "export/pick.json")
    if pick:
        L += _edge_pick(pick)
    if sizes.get("gguf"):
        ship = pick["file"] if pick else f"{name}-{list(sizes['gguf'])[-1]}.gguf"
        L += _edge_how_to_run(ship, bool(checks and checks.get("template")), name)
    return L + [""]


def _edge_pick(pick: dict[str, Any]) -> list[str]:
    """The file to ship under the quality budget, every candidate's loss, and how sure."""
    metric, budget = pick["metric"], pick["budget_pp"]
    L = [
        "",
        f"**File to ship: `gguf/{pick['file']}`** ({_mb(pick['bytes'])}), the smallest "
        f"file whose {metric} lost at most {budget:g} pp against the tuned model "
        f"(`export.quality_budget_pp`; `export/pick.json`).",
        "",
        f"| GGUF | size | {metric} delta vs tuned, pp (95% CI) | within {budget:g} pp |",
        "|---|---:|---|---|",
    ]
    for c in pick["candidates"]:
        lo, hi = c["ci_pp"]
        verdict = (
            ("yes" if c["ci_within"] else "yes (the CI spans the budget)") if c["within"] else "no"
        )
        L.append(
            f"| {c['type'].upper()} | {_mb(c['bytes'])} | {c['delta_pp']:+.2f} "
            f"[{lo:+.2f}, {hi:+.2f}] | {verdict} |"
        )
    chosen = next((c for c in pick["candidates"] if c["type"] == pick["type"]), None)
    if chosen is None:
        L += ["", "No quantized file was within the budget, so the F16 file is the one to ship."]
    elif not chosen["ci_within"]:
        L += [
            "",
            f"The pick rests on the point estimate: on {pick['n']} records the 95% CI of "
            f"{chosen['type'].upper()}'s delta reaches {chosen['ci_pp'][0]:+.2f} pp, beyond "
            "the budget, so a loss larger than the budget is not ruled out.",
        ]
    return L


def _edge_table(sizes: dict[str, Any], speed: dict[str, Any], name: str) -> list[str]:
    L = [
        "## Edge export (GGUF)",
        "",
        "| artifact | file | size | bits/weight | CPU tokens/s |",
        "|---|---|---:|---:|---:|",
    ]
    base_file = f"`{Path(sizes['base_path']).name}`" if sizes.get("base_path") else "-"
    rows = [
        ("base (PyTorch float32)", base_file, sizes.get("base"), None, "base"),
        ("base + adapter (PEFT)", "`adapter/`", sizes.get("adapter"), None, "adapter"),
        ("merged (PyTorch float32)", "`merged/`", sizes.get("merged"), None, "merged"),
    ]
    for t, g in sizes.get("gguf", {}).items():
        label, file = f"GGUF {t.upper()} (llama.cpp)", f"`gguf/{name}-{t}.gguf`"
        rows.append((label, file, g.get("bytes"), g.get("bits_per_weight"), f"gguf-{t}"))
    for label, file, size, bpw, key in rows:
        tps = speed.get(key, {}).get("tokens_per_s")
        L.append(
            f"| {label} | {file} | {_mb(size)} | {f'{bpw:.2f}' if bpw else '-'} | "
            f"{f'{tps:.1f}' if tps else '-'} |"
        )
    if speed:
        first = next(iter(speed.values()))
        L += [
            "",
            f"Speed: {first.get('new_tokens')} tokens generated greedily after a test prompt, "
            "one sequence, median of 3 runs after a warm-up, prefill included; "
            f"{first.get('threads')} threads. The adapter's size is its folder; base and "
            "merged sizes are their weight files (a base stored as GGUF is dequantized to "
            "float32 when loaded).",
        ]
    return L


def _edge_checks(checks: dict[str, Any]) -> list[str]:
    """The round-trip checks: template, stop token, and per file logits and answers."""
    tpl = checks.get("template")
    if tpl:
        probe = tpl.get("stop_probe", {})
        L = [
            "",
            f"Round-trip checks (`export/gguf_checks.json`): {tpl.get('ids_identical')} of "
            f"{tpl.get('conversations')} test conversations render to identical token ids "
            "with the HF tokenizer's template and with the GGUF's own template; generation "
            f"{'stops' if probe.get('stopped_correctly') else 'does NOT stop'} at the "
            f"end-of-turn token (id {probe.get('end_of_turn_id')}).",
        ]
    else:
        L = [
            "",
            "Round-trip checks (`export/gguf_checks.json`) on held-out documents (a CPT "
            "run trains no chat template, so none is checked).",
        ]
    L += [
        "",
        "| GGUF | positions | top-1 agreement with merged | mean KL (nats) "
        "| perplexity of every token, merged → GGUF | identical greedy answers | check |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t, c in checks.items():
        if t == "template":
            continue
        lg, an = c["logits"], c["answers"]
        verdict = (
            ("passed" if c["passed"] else "FAILED") + f" (top-1 ≥ {lg['min_top1']:.0%})"
            if lg.get("min_top1")
            else "reported"
        )
        ppl = (
            f"{lg['perplexity_hf']:.3f} → {lg['perplexity_gguf']:.3f}"
            if "perplexity_gguf" in lg
            else "-"
        )
        L.append(
            f"| {t.upper()} | {lg['positions']} | {lg['top1_agreement']:.2%} | "
            f"{lg['kl_mean']:.2e} | {ppl} | {an['identical']}/{an['prompts']} | {verdict} |"
        )
    return L + [
        "",
        "Positions are every token of held-out test conversations (prompts included), so "
        "this perplexity is not the answer-token perplexity of the results table and can "
        "move the other way; whether the tuned behaviour survived is what the GGUF columns "
        "of the results table measure."
        if tpl
        else "Positions are the first tokens of held-out documents: the perplexity column "
        "is what each file keeps of what continued pre-training taught.",
    ]


def _edge_how_to_run(small: str, chat: bool, name: str) -> list[str]:
    return [
        "",
        "Run it with llama.cpp or Ollama (the chat template and stop token are in the file):",
        "",
        "```bash",
        f"llama-cli -m gguf/{small} -cnv"
        if chat
        else f'llama-cli -m gguf/{small} -no-cnv -p "The first words of a text"',
        f"llama-server -m gguf/{small} --port 8080   # OpenAI-compatible /v1/chat/completions",
        f'printf "FROM ./gguf/{small}\\n" > Modelfile && ollama create {name} -f Modelfile '
        f"&& ollama run {name}",
        "```",
    ]


def write_card(run: Path) -> Path:
    out = run / "MODEL_CARD.md"
    write_text(out, render_card(run))
    return out


def _precision(train_cfg: dict[str, Any], history: dict[str, Any]) -> str:
    """What the config asked for and, for ``auto``, what the run measured and used."""
    used = history.get("mixed_precision") or {}
    asked = train_cfg.get("mixed_precision", "no")
    if not used or asked == "no":
        return str(asked)
    return f"{asked} -> {used.get('used')} ({used.get('why')})"
