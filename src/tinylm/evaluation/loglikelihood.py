"""Log-likelihood requests on a tinylm model, tokenized and truncated exactly as EleutherAI's
lm-evaluation-harness 0.4.13 does on a Hugging Face model (`HFLM.loglikelihood`,
`HFLM.loglikelihood_rolling`, `TemplateLM._encode_pair`, `utils.get_rolling_token_windows`).

    (context, continuation) texts ─► encode_pair: trailing whitespace of the context moves to the
        continuation; the continuation's ids are the ids of context + continuation after the
        context's own ids (an empty context: the tokenizer's start id, the harness's prefix token)
    ─► fit: context + continuation keep their last `context + 1` tokens (the model sees `context`)
    ─► groups of requests with the same context ids (the choices of one item, unless cutting made
        their contexts differ), scored in batches of many groups:
          two or more continuations: every context once (one right-padded forward into a per-row
          KV cache), then all continuations after their context (the cache rows repeated, one forward)
          one continuation: the whole sequence in one right-padded forward
    ─► Scored per request: sum of the continuation's log-probabilities (nats), whether greedy
        decoding reproduces it, its number of tokens

    a whole text ─► rolling_requests: the first window predicts the first `context` tokens after the
        start id, each later one the next `context` (the last one fewer, from a full window) ─► summed

The log-probabilities are those of one forward pass per window, as the harness's; batching and the
shared context change them only by float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from tinylm.console import progress
from tinylm.runtime import autocast_for
from tinylm.tokenizers import Tokenizer


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum of the continuation tokens' log-probabilities, nats
    greedy: bool  # whether greedy decoding reproduces every continuation token
    tokens: int  # continuation tokens scored


Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def tok_encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """`text`'s ids as the Hugging Face tokenizer encodes them with its default special tokens
    (BOS first where the tokenizer adds it, `add_bos`)."""
    ids = tokenizer.encode(text) if text else []
    return [tokenizer.bos_id, *ids] if tokenizer.add_bos and tokenizer.bos_id is not None else ids


def prefix_id(tokenizer: Tokenizer) -> int:
    """The token an empty context conditions on: the harness's `prefix_token_id` (BOS, else EOS);
    tinylm's start id for tokenizers with neither (char: a line break)."""
    return tokenizer.start_ids()[-1]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
    """(context ids, continuation ids) of a request, by the harness's rule: an empty context is
    the prefix token (or the continuation's first token when that is the prefix token); else the
    context's trailing whitespace moves to the continuation, and the continuation's ids are those
    of the whole text after the context's ids. Where the harness would fail, tinylm goes on: a
    context that encodes to no ids (whitespace for the word tokenizer) conditions on the prefix
    token, and a continuation the whole text leaves no ids (the word tokenizer joins "red" + "ball"
    into one word) is encoded alone."""
    if context == "":
        cont = tokenizer.encode(continuation) if continuation else []
        prefix = prefix_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok_encode(tokenizer, context + continuation)
    ctx = tok_encode(tokenizer, context)
    cont = whole[len(ctx):]
    if not cont and continuation:  # joined into the context's last token (the harness fails here): alone
        cont = tokenizer.encode(continuation)
    return (ctx or [prefix_id(tokenizer)]), cont


def fit(request: Request, context: int) -> Request:
    """The request cut to the model: a continuation keeps its last `context` tokens, then context
    + continuation their last `context + 1` (the harness's left truncation)."""
    ctx, cont = request
    cont = cont[-context:]
    keep = context + 1 - len(cont)
    return ctx[-keep:], cont


def rolling_requests(tokens: Sequence[int], prefix: int, context: int) -> list[Request]:
    """The disjoint windows that score every token of a text once (`get_rolling_token_windows`
    with context_len 1, then `make_disjoint_window`): (context ids, continuation ids) each."""
    tokens = list(tokens)
    if not tokens:
        return []
    windows = []
    first = min(context, len(tokens))
    windows.append(([prefix] + tokens[:first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, context)
        end = done + n
        windows.append((tokens[end - context - 1:end - 1], tokens[end - n:end]))
        done += n
    return [(inp[:len(inp) - (len(pred) - 1)], pred) for inp, pred in windows]


# --------------------------------------------------------------------------- scoring


def _head_logprobs(model: torch.nn.Module, hidden: torch.Tensor, targets: list[int]) -> tuple[float, bool]:
    logits = model.head(hidden).float()
    scores = F.log_softmax(logits, dim=-1)
    target = torch.tensor(targets, device=scores.device)
    total = float(scores.gather(1, target[:, None]).sum())
    return total, bool((scores.argmax(-1) == target).all())


def _score_singles(model, groups: list[tuple[list[int], list[tuple[int, list[int]]]]], device,
                   out: dict[int, Scored]) -> None:
    """One continuation per group: whole sequences, right-padded, one causal forward."""
    seqs = [(ctx + cont, len(cont), index) for ctx, [(index, cont)] in groups]
    width = max(len(seq) for seq, _, _ in seqs) - 1
    inputs = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, (seq, _, _) in enumerate(seqs):  # padding comes after each row: causal attention never sees it
        inputs[row, :len(seq) - 1] = torch.tensor(seq[:-1])
    hidden = model.features(inputs.to(device))
    for row, (seq, n, index) in enumerate(seqs):
        total, greedy = _head_logprobs(model, hidden[row, len(seq) - 1 - n:len(seq) - 1], seq[-n:])
        out[index] = Scored(total, greedy, n)


def _score_shared(model, groups: list[tuple[list[int], list[tuple[int, list[int]]]]], device,
                  out: dict[int, Scored]) -> None:
    """Several continuations per group: each context once into a per-row cache, then every
    continuation after its context's cache row (repeated), one forward for all of them."""
    lengths = [len(ctx) for ctx, _ in groups]
    inputs = torch.zeros(len(groups), max(lengths), dtype=torch.long)
    for row, (ctx, _) in enumerate(groups):
        inputs[row, :len(ctx)] = torch.tensor(ctx)
    rows = [(g, index, cont) for g, (_, conts) in enumerate(groups) for index, cont in conts]
    width = max(len(cont) for _, _, cont in rows) - 1
    positions = max(lengths) + width  # the batch's positions (at most the model's context)
    cache = model.new_cache(len(groups), positions).rows(0, len(groups))  # per-row
    hidden = model.features(inputs.to(device), cache=cache)
    last = hidden[torch.arange(len(groups)), torch.tensor(lengths) - 1]  # predicts each continuation's first token
    more = None
    if width > 0:
        repeat = torch.tensor([g for g, _, _ in rows], device=device)
        choices = model.new_cache(len(rows), positions).rows(0, len(rows))
        for layer in range(len(cache.k)):
            choices.k[layer].copy_(cache.k[layer].index_select(0, repeat))
            choices.v[layer].copy_(cache.v[layer].index_select(0, repeat))
        choices.lengths.copy_(torch.tensor([lengths[g] for g, _, _ in rows], device=device))
        tail = torch.zeros(len(rows), width, dtype=torch.long)
        for row, (_, _, cont) in enumerate(rows):
            tail[row, :len(cont) - 1] = torch.tensor(cont[:-1])
        more = model.features(tail.to(device), cache=choices)
    for row, (g, index, cont) in enumerate(rows):
        states = last[g:g + 1] if more is None else torch.cat([last[g:g + 1], more[row, :len(cont) - 1]])
        total, greedy = _head_logprobs(model, states, cont)
        out[index] = Scored(total, greedy, len(cont))


def _batches(groups: list, context: int, budget: int, shared: bool) -> list[list]:
    """Consecutive groups (sorted longest first) in batches of about `budget` padded tokens (rows
    x the longest sequence; with shared contexts, the cache's rows x positions: the longest
    context + the longest continuation, which must stay inside the model's context)."""
    batches: list[list] = []
    batch: list = []
    rows = widest_ctx = widest_cont = widest = 0
    for group in groups:
        ctx, conts = group
        cont = max(len(c) for _, c in conts)
        wc, wn, w = max(widest_ctx, len(ctx)), max(widest_cont, cont), max(widest, len(ctx) + cont)
        width = wc + wn if shared else w
        if batch and ((rows + len(conts)) * width > budget or (shared and wc + wn - 1 > context)):
            batches.append(batch)
            batch, rows, wc, wn, w = [], 0, len(ctx), cont, len(ctx) + cont
        batch.append(group)
        rows, widest_ctx, widest_cont, widest = rows + len(conts), wc, wn, w
    if batch:
        batches.append(batch)
    return batches


@torch.no_grad()
def score_requests(model: torch.nn.Module, requests: Sequence[Request], *, batch_size: int = 16,
                   device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                   show_progress: bool = False, description: str = "scoring") -> list[Scored]:
    """Score (context ids, continuation ids) requests, cut to the model first (`fit`); a
    continuation must have at least one token. Forwards hold about `batch_size` x context tokens.
    Returns one `Scored` per request, in order."""
    device = device or torch.device("cpu")
    context = model.cfg.context
    fitted = [fit(r, context) for r in requests]
    for i, (_, cont) in enumerate(fitted):
        if not cont:
            raise ValueError(f"request {i} has an empty continuation")
    by_context: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for index, (ctx, cont) in enumerate(fitted):
        by_context.setdefault(tuple(ctx), []).append((index, cont))
    groups = sorted(((list(ctx), conts) for ctx, conts in by_context.items()),
                    key=lambda g: -(len(g[0]) + max(len(c) for _, c in g[1])))
    singles = [g for g in groups if len(g[1]) == 1]
    shared = [g for g in groups if len(g[1]) > 1]
    budget = max(batch_size, 1) * context
    out: dict[int, Scored] = {}
    was_training = model.training
    model.eval()
    bar = progress() if show_progress else None
    task = bar.add_task(description, total=len(fitted)) if bar else None
    try:
        if bar:
            bar.start()
        for kind, chosen in ((_score_singles, singles), (_score_shared, shared)):
            for batch in _batches(chosen, context, budget, kind is _score_shared):
                with autocast_for(model, device, dtype):
                    kind(model, batch, device, out)
                if bar:
                    bar.advance(task, sum(len(conts) for _, conts in batch))
    finally:
        if bar:
            bar.stop()
        model.train(was_training)
    return [out[i] for i in range(len(fitted))]
