"""Preference scores: the DPO objective's pieces, and `tinylm eval RUN --pairs FILE`.

    pairs (data/preferences.py) ─► pad_pairs: rows [chosen ..., rejected ...] ─► model(x) logits
        ─► sequence_logps: log pi(response | prompt) = the sum of the response tokens' log-probabilities
    reference (Reference): the same model with its LoRA adapters disabled | a frozen model (the base's
        weights) | none (log-probabilities of 0: the raw comparison)
        ─► sequence_logps of the reference, under torch.no_grad()
    ─► preference_losses (sigmoid DPO with label smoothing, or IPO), rewards = beta x (policy - reference)
    ─► PairScores: sums of the loss, rewards, accuracies and margins (TRL's metric names: `metrics`)

`evaluate_pairs` (the eval verb) scores a run on held-out pairs against its base: an adapter run's base is
the model with the adapter disabled, a full or merged fine-tune's base run is loaded beside it, and a run
without a base (pre-trained, imported) is compared on raw log-probabilities (reference 0). The result is
appended to the run's evals.jsonl.

Sources: Rafailov et al. 2023, "Direct Preference Optimization" (eq. 7); Mitchell 2023, "A note on DPO with
noisy preferences" (label smoothing, as TRL's DPOTrainer: loss_type "sigmoid"); Azar et al. 2023, "A General
Theoretical Paradigm to Understand Learning from Human Preferences" (IPO, eq. 17, with TRL's per-token
averaging of each log-ratio).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from tinylm.config import DPOConfig, EvalConfig
from tinylm.data.examples import IGNORE
from tinylm.data.preferences import Pair, pad_pairs
from tinylm.model import lora
from tinylm.runtime import autocast

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability, labelled tokens) per row: logits (rows, T, vocab) and targets (rows, T), IGNORE where
    no loss applies -> the sum over the labelled positions of log softmax(logits)[target] (float32), and
    how many there are (rows,)."""
    mask = targets != IGNORE
    logp = logits.float().log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logp, 0.0).sum(-1), mask.sum(-1)


def preference_losses(policy: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor,
                      dpo: DPOConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards, from per-row sequence log-probabilities of the
    policy and the reference (2B,) (rows [chosen ..., rejected ...]) and the rows' response tokens (2B,).

    h = (pi_c - ref_c) - (pi_r - ref_r); sigmoid: -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)
    (ls = 0: DPO's eq. 7); ipo: (h' - 1 / (2 beta))^2, h' with each log-ratio divided by its response's
    tokens (TRL). Rewards: beta (pi - ref), detached. Returns (losses (B,), chosen (B,), rejected (B,))."""
    ratio = policy - reference
    chosen, rejected = ratio.chunk(2)
    if dpo.loss == "ipo":
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        h = chosen / chosen_tokens.clamp(min=1) - rejected / rejected_tokens.clamp(min=1)
        losses = (h - 1 / (2 * dpo.beta)) ** 2
    else:
        h = chosen - rejected
        ls = dpo.label_smoothing
        losses = -(1 - ls) * F.logsigmoid(dpo.beta * h) - ls * F.logsigmoid(-dpo.beta * h)
    return losses, dpo.beta * chosen.detach(), dpo.beta * rejected.detach()


class Reference:
    """Where the reference log-probabilities come from: `adapters_off` (the policy model itself with its LoRA
    adapters disabled: no second copy), a frozen `model` (a full fine-tune's copy of the base weights, or a
    base run loaded beside the run), or neither (no reference: log-probabilities of 0)."""

    def __init__(self, model: torch.nn.Module | None = None, *, adapters_off: bool = False, what: str = ""):
        self.model, self.adapters_off = model, adapters_off
        self.what = what or ("the base (adapters disabled)" if adapters_off else "the base's weights" if model
                             else "none (raw log-probabilities)")
        if model is not None:
            model.requires_grad_(False).eval()

    @torch.no_grad()
    def logps(self, policy: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(rows,) sequence log-probabilities of targets `y` after inputs `x` (zeros without a reference); the
        reference computes in eval mode (no dropout)."""
        if self.model is None and not self.adapters_off:
            return torch.zeros(x.shape[0], device=x.device)
        model = self.model if self.model is not None else policy
        if self.model is not None and next(model.parameters()).device != x.device:
            model.to(x.device)
        was_training = model.training
        model.eval()
        try:
            with lora.adapters_disabled(model) if self.adapters_off else contextlib.nullcontext():
                logits, _ = model(x)
        finally:
            model.train(was_training)
        return sequence_logps(logits, y)[0]


class PairScores:
    """Running sums of a preference objective over pairs: loss, rewards, accuracies, margins, log-probs."""

    def __init__(self) -> None:
        self.sums = [0.0] * (len(METRICS) + 2)  # the metrics, the loss, the pairs

    def add(self, losses: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, policy: torch.Tensor) -> None:
        pc, pr = policy.detach().chunk(2)
        values = [chosen.sum(), rejected.sum(), (chosen > rejected).float().sum(), (chosen - rejected).sum(),
                  pc.sum(), pr.sum(), losses.detach().sum()]
        for i, v in enumerate(values):
            self.sums[i] += float(v)
        self.sums[-1] += len(losses)

    @property
    def count(self) -> int:
        return int(self.sums[-1])

    def take(self) -> list[float]:
        """The sums (to add over processes), reset."""
        sums, self.sums = self.sums, [0.0] * len(self.sums)
        return sums

    @staticmethod
    def means(sums: Sequence[float], prefix: str = "") -> dict[str, float]:
        """Mean metrics of summed `take()` values, by TRL's names (with `prefix`, e.g. "eval_")."""
        n = max(sums[-1], 1.0)
        return {prefix + name: sums[i] / n for i, name in enumerate(METRICS)}


@torch.no_grad()
def score_pairs(model: torch.nn.Module, pairs: Sequence[Pair], reference: Reference, dpo: DPOConfig, *,
                batch_size: int = 16, device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                shard: tuple[int, int] = (0, 1)) -> PairScores:
    """The preference objective and its metrics on `pairs` (this process's share: every world_size-th pair
    from rank), `batch_size` pairs per forward pass, in eval mode."""
    device = device or torch.device("cpu")
    rank, world_size = shard
    mine = sorted(pairs[rank::world_size], key=len)
    scores = PairScores()
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(mine), batch_size):
            x, y = (t.to(device) for t in pad_pairs(mine[i:i + batch_size]))
            with autocast(device, dtype):
                ref = reference.logps(model, x, y)
                logits, _ = model(x)
            policy, tokens = sequence_logps(logits, y)
            scores.add(*preference_losses(policy, ref, tokens, dpo), policy)
    finally:
        model.train(was_training)
    return scores


@dataclass
class PairEval:
    """`tinylm eval RUN --pairs FILE`: the share of pairs whose chosen response gets the higher reward
    (beta x the log-ratio to the reference; strictly higher, as TRL counts it), the mean reward margin,
    the mean rewards, the objective's loss at the run's dpo settings, and what was compared."""

    accuracy: float
    margin: float
    chosen_reward: float
    rejected_reward: float
    loss: float
    pairs: int
    dropped: int
    beta: float
    reference: str

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"preference accuracy {self.accuracy:.3f}   mean margin {self.margin:.4f}   (rewards chosen "
                f"{self.chosen_reward:.4f}, rejected {self.rejected_reward:.4f}; beta {self.beta:g}; loss {self.loss:.4f}; "
                f"{self.pairs:,} pairs" + (f", {self.dropped:,} dropped" if self.dropped else "")
                + f"; reference: {self.reference})")


def run_reference(run) -> Reference:
    """The reference a run is scored against: its base (an adapter run: the adapter disabled; a full or
    merged fine-tune: the base run's weights it was tuned from, sha256-checked, loaded alike; a base run that
    is gone is a one-line error), or none for a run without a base."""
    from tinylm.run import load
    from tinylm.run.layout import base_weights

    ft = run.config.finetune
    if ft.is_adapter_run:
        return Reference(adapters_off=True)
    if ft.method and ft.base:
        weights = base_weights(run.config, run.run_dir)  # the weights it was tuned from (sha256-checked)
        base = load(ft.base, checkpoint=str(weights), device=str(run.device),
                    dtype=str(run.dtype).removeprefix("torch."))
        return Reference(base.model, what=f"the base run {ft.base}")
    return Reference()


def evaluate_pairs(run_dir: str | Path, cfg: EvalConfig) -> PairEval:
    """Preference accuracy and margin of run `run_dir` on the pairs of `cfg.pairs` (a .json/.jsonl file or
    record source; "" = a DPO run's own validation pairs), rendered with the run's template (a run without
    one: the default for its vocabulary), fitted to its training window; appended to evals.jsonl."""
    from tinylm import fileio
    from tinylm.chat.encode import choose_template
    from tinylm.chat.templates import get_template
    from tinylm.console import console
    from tinylm.data.preferences import make_pairs, read_pairs
    from tinylm.errors import ConfigError
    from tinylm.run.run import load, record_eval

    cfg.validate()
    run = load(run_dir, **cfg.load_options())
    rc = run.config
    template = (get_template(rc.finetune.template) if rc.finetune.template
                else choose_template("", "preference", run.tokenizer))
    if cfg.pairs:
        pairs, counts = make_pairs(read_pairs(cfg.pairs, cfg.errors), run.tokenizer, template, rc.seq_len + 1)
        name = cfg.pairs
    elif rc.finetune.objective == "dpo":
        from tinylm.data.finetune import run_pairs

        loaded = run_pairs(rc, run.tokenizer, quiet=True)
        pairs, counts, name = loaded.val, loaded.counts["val"], f"{rc.data.source} (validation pairs)"
    else:
        raise ConfigError(f"{run_dir} is not a DPO run; give the pairs to score: --pairs FILE")
    if not pairs:
        raise ConfigError(f"no pair of {name} fits the run's window of {rc.seq_len} tokens; give shorter pairs")
    reference = run_reference(run)
    console.print(f"scoring {len(pairs):,} preference pairs of {name} (template {template.name}) against "
                  f"{reference.what}")
    scores = score_pairs(run.model, pairs, reference, rc.dpo, batch_size=cfg.batch_size, device=run.device,
                         dtype=run.dtype)
    sums = scores.take()
    means = PairScores.means(sums)
    result = PairEval(accuracy=means["rewards/accuracies"], margin=means["rewards/margins"],
                      chosen_reward=means["rewards/chosen"], rejected_reward=means["rewards/rejected"],
                      loss=sums[-2] / max(sums[-1], 1), pairs=len(pairs), dropped=counts.dropped, beta=rc.dpo.beta,
                      reference=reference.what)
    sha = fileio.sha256_file(Path(cfg.pairs)) if cfg.pairs and Path(cfg.pairs).is_file() else None
    record_eval(run, {"data": fileio.absolute(cfg.pairs) if sha else name, "dataset": None, "split": "pairs",
                      "sha256": sha, **result.to_dict()})
    return result
