"""How often batching changes a sampled token: seeded requests decoded together by the serving engine
against the same requests decoded alone.

    python bench/batch_exactness.py                        # tinystories-gpt2 size, random weights, CPU float32
    python bench/batch_exactness.py --run RUN_DIR          # a trained run instead
    python bench/batch_exactness.py --size tiny --requests 16 --tokens 16    # a quick check that it runs

`tinylm serve`'s engine (`tinylm.generation.engine.Engine`, built as the server builds it) decodes
`--requests` seeded requests (seed i, temperature 1.0, no other filter, `--tokens` new tokens after
a short prompt) in batches of `--batch` rows that start together (the server's default
`--max-batch` is 16), then each request alone, which is bit-identical to `Run.generate` (tested). For
every step at which a request's batched and lone runs have the same history it compares the two
logit vectors and the probability that the sampler's draw (inverse CDF of one uniform number, the
same in both) picks another token with them: the measure of the u between C_k and C'_k for some k,
the cumulative probabilities at temperature 1. With V tokens there are V such boundaries, each moved
by rounding, so this grows with the vocabulary. Reported: the largest logit differences (absolute, and relative to the
largest logit), the mean change probability per token (the expected rate) and the requests whose
tokens did differ (the observed rate: diverged requests / tokens compared up to each divergence).
Prints a Markdown row and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve import PROMPTS, make_run  # noqa: E402
from shakespeare_char import machine  # noqa: E402

from tinylm.config import ServeConfig  # noqa: E402
from tinylm.generation import GenerationConfig  # noqa: E402
from tinylm.serving.app import Service  # noqa: E402
from tinylm.generation.engine import Engine, Request, Row  # noqa: E402


class Recording(Engine):
    """The server's engine, recording the logits each request samples from (before the filters)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logits: dict[int, list[torch.Tensor]] = {}
        self.tokens: dict[int, list[int]] = {}

    def _sample_all(self, seqs):
        for seq in seqs:
            self.logits.setdefault(id(seq.request), []).append(seq.logits[0, :self.vocab_size].clone())
        super()._sample_all(seqs)

    def run(self, rows: list[Row]) -> list[tuple[list[int], list[torch.Tensor]]]:
        """Decode `rows` together (one request each) to the end: per row, its tokens and logits."""
        requests = []
        for row in rows:
            tokens: list[int] = []
            requests.append((Request([row], lambda event, tokens=tokens: tokens.extend(t.token for t in event.tokens)),
                             tokens))
            self.submit(requests[-1][0])
        while self.running or self.waiting:
            self.step()
        return [(tokens, self.logits.pop(id(request))) for request, tokens in requests]


def change_probability(a: torch.Tensor, b: torch.Tensor) -> float:
    """P(the inverse-CDF draw of one uniform number u picks different tokens from logits a and b) at
    temperature 1 (as `draw_tokens` does: float32 softmax, float64 cumulative sums): the measure of
    the u that lie between some C_k and C'_k, the union of those intervals (both ends rise with k)."""
    ca, cb = (torch.softmax(x.float(), dim=-1).double().cumsum(-1) for x in (a, b))
    ca, cb = ca / ca[-1], cb / cb[-1]
    lo, hi = torch.minimum(ca, cb), torch.maximum(ca, cb)
    covered = torch.cat([hi.new_zeros(1), hi[:-1]])  # what the intervals below k already cover
    return float((hi - torch.maximum(lo, covered)).clamp(min=0).sum())


def measure(service: Service, args: argparse.Namespace) -> dict:
    s = service
    engine = Recording(s.run.model, max_batch=args.batch, max_queue=args.requests,
                       **{**s.run.engine_args(), "stop_ids": ()})
    rows = [Row(s.run.encode_prompt(f"{PROMPTS[i % len(PROMPTS)]} {i}", True),
                GenerationConfig(max_new_tokens=args.tokens, temperature=1.0, seed=i).validate())
            for i in range(args.requests)]
    compared, diverged, probabilities, worst_abs, worst_rel, examples = 0, 0, [], 0.0, 0.0, []
    start = time.perf_counter()
    for first in range(0, len(rows), args.batch):
        wave = rows[first:first + args.batch]
        together = engine.run(wave)
        for i, (row, (tokens, logits)) in enumerate(zip(wave, together, strict=True)):
            ((alone_tokens, alone_logits),) = engine.run([row])
            for step, (a, b) in enumerate(zip(alone_logits, logits, strict=False)):
                compared += 1
                diff = float((a - b).abs().max())
                worst_abs = max(worst_abs, diff)
                worst_rel = max(worst_rel, diff / float(a.abs().max()))
                probabilities.append(change_probability(a, b))
                if alone_tokens[step] != tokens[step]:
                    diverged += 1
                    examples.append({"request": first + i, "step": step, "alone": alone_tokens[step],
                                     "batched": tokens[step], "largest_logit_difference": diff})
                    break
    mean = sum(probabilities) / len(probabilities)
    return {"bench": "batch_exactness", "requests": len(rows), "batch": args.batch, "tokens": args.tokens,
            "compared_tokens": compared, "diverged_requests": diverged,
            "observed_rate": diverged / compared, "expected_rate": mean,
            "max_change_probability": max(probabilities),
            "max_abs_logit_difference": worst_abs, "max_rel_logit_difference": worst_rel,
            "examples": examples[:5], "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run directory (default: random weights of --size)")
    ap.add_argument("--size", choices=("tinystories-gpt2", "tiny"), default="tinystories-gpt2")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16, help="rows decoding together (the server's --max-batch)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else make_run(Path(tmp), args.size)[0]
        service = Service(run, ServeConfig(device=args.device, dtype=args.dtype, compile="off"))
        with torch.inference_mode():
            row = measure(service, args)
    row.update(model=args.run or f"{args.size} (random weights)", device=args.device, dtype=args.dtype,
               threads=torch.get_num_threads(), machine=machine())
    print(json.dumps(row), flush=True)
    print("| model | requests x tokens (batch) | largest logit difference (relative) | expected changes per token "
          "| diverged requests (tokens compared) | observed per token |")
    print(f"| {row['model']} | {row['requests']} x {row['tokens']} ({row['batch']}) | "
          f"{row['max_abs_logit_difference']:.2g} ({row['max_rel_logit_difference']:.2g}) | "
          f"{row['expected_rate']:.2g} | {row['diverged_requests']} ({row['compared_tokens']:,}) | "
          f"{row['observed_rate']:.2g} |")


if __name__ == "__main__":
    main()
