"""Beam search over rows of the generation engine's cache.

    one Row with beams = W ──► W cache rows (the engine admits them together)
    every step:  logits (W, vocab) ─► repetition penalty, suppressed ids ─► log_softmax + each beam's score
                 ─► the 2W best extensions ─► those that end (a stop id or a stop string) are finished,
                 the best W others live on ─► the engine copies each survivor's parent row (cache, ids)
                 into its row and decodes the W new tokens together
    ends after max_new_tokens, when every extension ended, or once W hypotheses are finished and no live
    beam scores above the worst of them (the usual heuristic); live beams at the end count as finished.

Scores are sums of log-probabilities under the model (after the repetition penalty) divided by
len(ids) ** length_penalty; beam search is deterministic and ignores temperature, top-k, top-p and min-p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from tinylm.config import GenerationConfig
from tinylm.generation.sampling import apply_repetition_penalty, seen_mask
from tinylm.generation.text import Decode, added_text, cut_at_stop, find_stop


@dataclass
class Beam:
    """One finished hypothesis: its new ids (ending with the stop id, if one ended it), its score (sum of
    log-probabilities / len(ids) ** length_penalty), its log-probability, and, when the engine can decode,
    its text (cut before the first stop string) and why it ended ("stop" or "length")."""

    ids: list[int]
    score: float
    logprob: float
    text: str = ""
    finish: str = "length"


class BeamSearch:
    """One prompt's beam search: `advance(logits)` per step, `best()` at the end. `seqs` are the engine's
    rows of it (set by the engine), in beam order."""

    def __init__(self, cfg: GenerationConfig, prompt: Sequence[int], *, vocab: int, stop_ids: Iterable[int],
                 suppress: torch.Tensor | None, device: torch.device, decode: Decode | None = None,
                 markers: Iterable[int] = ()):
        self.cfg, self.width, self.prompt = cfg, cfg.beams, list(prompt)
        self.stop_ids, self.markers, self.decode = set(stop_ids), set(markers), decode
        self.suppress, self.device = suppress, device
        self.scores = torch.full((self.width,), float("-inf"), device=device)
        self.scores[0] = 0.0  # all rows start equal: only the first one may extend
        self.new: list[list[int]] = [[] for _ in range(self.width)]
        self.finished: list[Beam] = []
        self.steps = 0
        self.seen = seen_mask([self.prompt] * self.width, vocab, device) if cfg.repetition_penalty != 1 else None
        self.seqs: list = []

    def normalised(self, logprob: float, length: int) -> float:
        # length ** length_penalty in log space, kept inside the float64 range: any finite penalty ranks
        return logprob / math.exp(max(-700.0, min(700.0, self.cfg.length_penalty * math.log(length))))

    def _stopped(self, ids: list[int]) -> bool:
        return bool(self.cfg.stop) and find_stop(added_text(self.decode, self.prompt, ids, self.markers),
                                                 self.cfg.stop) >= 0

    def advance(self, logits: torch.Tensor) -> tuple[list[int], list[int]] | None:
        """Extend the beams by the next token's `logits` (W, vocab): (each row's parent beam, each row's
        new token), or None once the search has ended."""
        width, step = self.width, self.steps
        self.steps += 1
        logits = logits.float()
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.cfg.repetition_penalty)
        if self.suppress is not None:
            logits = logits.masked_fill(self.suppress, float("-inf"))
        logprobs = torch.log_softmax(logits, dim=-1)
        vocab = logprobs.size(-1)
        candidates = (self.scores[:, None] + logprobs).view(-1)
        top, where = torch.topk(candidates, min(2 * width, candidates.numel()))
        keep: list[tuple[int, int, float]] = []
        for s, i in zip(top.tolist(), where.tolist(), strict=True):
            if s == float("-inf"):
                break
            b, t = divmod(i, vocab)
            ids = self.new[b] + [t]
            if t in self.stop_ids or self._stopped(ids):
                self.finished.append(Beam(ids, self.normalised(s, len(ids)), s, finish="stop"))
            else:
                keep.append((b, t, s))
                if len(keep) == width:
                    break
        if not keep:  # every extension ended
            self.new, self.scores = [], self.scores[:0]
            return None
        while len(keep) < width:  # fewer live extensions than beams: fill with dead copies
            keep.append((keep[0][0], keep[0][1], float("-inf")))
        parents = [b for b, _, _ in keep]
        tokens = [t for _, t, _ in keep]
        self.new = [self.new[b] + [t] for b, t, _ in keep]
        self.scores = torch.tensor([s for _, _, s in keep], device=self.device)
        if self.seen is not None:
            self.seen = self.seen[torch.tensor(parents, device=self.device)]
            self.seen[torch.arange(width, device=self.device), torch.tensor(tokens, device=self.device)] = True
        if len(self.finished) >= width:
            worst = sorted(b.score for b in self.finished)[-width]
            if self.normalised(float(self.scores.max()), step + 1) <= worst:
                self.new, self.scores = [], self.scores[:0]
                return None
        if step + 1 >= self.cfg.max_new_tokens:
            return None
        return parents, tokens

    def best(self) -> list[Beam]:
        """The `num_return_sequences` best hypotheses, best first, with their texts when it can decode."""
        if not self.steps:  # nothing generated (max_new_tokens = 0)
            return [Beam([], 0.0, 0.0)]
        live = [Beam(ids, self.normalised(float(s), len(ids)), float(s)) for ids, s in
                zip(self.new, self.scores.tolist(), strict=True) if s != float("-inf")]
        ranked = sorted(self.finished + live, key=lambda beam: beam.score, reverse=True)
        beams = ranked[:self.cfg.num_return_sequences] if ranked else [Beam([], 0.0, 0.0)]
        if self.decode is not None:
            for beam in beams:
                beam.text = cut_at_stop(added_text(self.decode, self.prompt, beam.ids, self.markers), self.cfg.stop)
        return beams
