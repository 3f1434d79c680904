"""DPO in the one trainer: the loss of a step on preference pairs, and the pairs as the trainer's data.

    launch.train ─► open_finetune_data: Pairs (data/preferences.py) ─► PairData (loader: PairBatches)
                 ─► build_model (the base's weights; LoRA: the adapter, base frozen)
                 ─► DPOObjective(cfg, model, data): the reference model
                        LoRA  the same model with its adapters disabled (lora.adapters_disabled): no copy
                        full  a frozen copy of the base's weights, made before the first step (2x the weights)
                 ─► Trainer(..., objective) ─► every micro-batch x (2B, T) = [chosen rows; rejected rows]:
                        reference log-probs (torch.no_grad, eval mode) ─► policy forward (DDP / compiled as any
                        fine-tune) ─► preference_losses ─► mean over pairs ─► backward
                    metrics rows: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
                        logps/chosen, logps/rejected (TRL's names; means since the last row, over processes);
                    validation rows: val_loss = the mean objective on the validation pairs, and eval_rewards/...

Everything else (schedule, clipping, checkpoints, exact resume, torchrun, the time budget, trackers) is the
trainer's, unchanged. The loss math and the reference are evaluation/preferences.py's, shared with
`tinylm eval --pairs`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from tinylm.config import RunConfig
from tinylm.data.preferences import PairBatches, Pairs
from tinylm.evaluation.preferences import PairScores, Reference, preference_losses, score_pairs, sequence_logps
from tinylm.model import GPT
from tinylm.training import distributed
from tinylm.training.data import quick_share
from tinylm.training.distributed import Procs


class PairData:
    """Preference pairs for the trainer (the protocol of training/data.py): batches of pairs, and validation
    as the mean objective on the validation pairs (its metrics kept for the validation row)."""

    def __init__(self, pairs: Pairs):
        self.pairs = pairs
        self.train, self.val = pairs.train, pairs.val
        self.objective: DPOObjective | None = None  # set by DPOObjective: validation needs the reference

    def loader(self, seq_len: int, micro: int, seed: int, sampling: str, shard: tuple[int, int]) -> PairBatches:
        return PairBatches(self.train, micro, seed, shard)

    def steps_per_epoch(self, plan: Any) -> float:
        return len(self.train) / (plan.micro * plan.accum * plan.processes)

    def validation(self, model: torch.nn.Module, *, seq_len: int, batch_size: int, device: torch.device,
                   dtype: torch.dtype, max_tokens: int, shard: tuple[int, int]) -> tuple[float, int]:
        """(sum of the pairs' losses, pairs) on this process's share of the validation pairs (the first ones
        up to `max_tokens` tokens for a quick periodic pass)."""
        val = quick_share(self.val, max_tokens)
        objective = self.objective
        assert objective is not None, "PairData trains with a DPOObjective"
        scores = score_pairs(model, val, objective.reference, objective.cfg.dpo, batch_size=batch_size,
                             device=device, dtype=dtype, shard=shard)
        objective.val_sums = scores.take()
        return objective.val_sums[-2], int(objective.val_sums[-1])

    def describe(self) -> str:
        p = self.pairs
        tokens = sum(len(x) for x in self.train)
        return (f"{len(self.train):,} train / {len(self.val):,} val preference pairs ({tokens:,} train tokens), "
                f"template {p.template}, {p.name}")


class DPOObjective:
    """The loss of a training step on preference pairs (cfg.dpo: beta, sigmoid with label smoothing, or IPO),
    against the reference model: the base. Built once the model holds the base's weights (launch.py)."""

    def __init__(self, cfg: RunConfig, model: GPT, data: PairData):
        self.cfg, self.model = cfg, model
        if cfg.finetune.is_adapter_run:
            self.reference = Reference(adapters_off=True)
        else:  # a frozen copy of the base weights, before training changes them
            self.reference = Reference(copy.deepcopy(model), what="a frozen copy of the base's weights")
        self.train_scores = PairScores()
        self.val_sums: list[float] = []
        data.objective = self

    def loss(self, forward: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean objective over the micro-batch's pairs: x, y (2B, T), rows [chosen ..., rejected ...];
        `forward` is the trainer's (DDP-wrapped, compiled) model. Records the step's metrics."""
        reference = self.reference.logps(self.model, x, y)
        logits, _ = forward(x)
        policy, tokens = sequence_logps(logits, y)
        losses, chosen, rejected = preference_losses(policy, reference, tokens, self.cfg.dpo)
        self.train_scores.add(losses, chosen, rejected, policy)
        return losses.mean()

    def train_metrics(self, procs: Procs, device: torch.device) -> dict[str, float]:
        """The metrics of the pairs trained on since the last call (over every process), by TRL's names."""
        return PairScores.means(distributed.all_sum(procs, self.train_scores.take(), device))

    def validation_metrics(self, procs: Procs, device: torch.device) -> dict[str, float]:
        """The last validation pass's metrics over every process, as TRL names them (eval_rewards/...)."""
        if not self.val_sums:
            return {}
        return PairScores.means(distributed.all_sum(procs, self.val_sums, device), prefix="eval_")
