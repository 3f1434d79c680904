"""Inference precision and speed options: bfloat16 weights, int8 weight-only quantization, CPU decode
kernels, the compiled decode step, and the cheaper exact sampler. Results must not change beyond the
chosen precision: greedy ids equal float32's wherever float32's margin between its two likeliest
tokens exceeds the precision's measured logit error."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinylm
from tinylm.cli import main
from tinylm.config import ModelConfig
from tinylm.errors import ConfigError
from tinylm.generation import GenerationConfig, generate_ids, kernels, precision, sample_next, top_p_filter
from tinylm.generation.compiled import DecodeStep
from tinylm.generation.engine import Engine, Request, Row
from tinylm.generation.sampling import draw_tokens
from tinylm.model import GPT

# the largest logit error each precision may make on the trained tiny model, relative to the
# largest float32 logit: bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation)
TOLERANCE = {"bfloat16": 0.03, "int8": 0.05}


def decode_logits(model: GPT, prompt: list[int], ids: list[int]) -> torch.Tensor:
    """The logits the decoder sees before each of `ids` (fed one at a time after the prompt), (n, vocab)."""
    with torch.inference_mode():
        cache = model.new_cache(1)
        out = [model(torch.tensor([prompt]), cache=cache)[0][0, -1]]
        out += [model(torch.tensor([[t]]), cache=cache)[0][0, -1] for t in ids[:-1]]
    return torch.stack(out).float()


@pytest.mark.parametrize("option", [dict(dtype="bfloat16"), dict(quantize="int8")], ids=["bfloat16", "int8"])
def test_greedy_ids_equal_float32_where_the_margin_exceeds_the_precisions_error(trained_run, option):
    reference = tinylm.load(trained_run, device="cpu", dtype="float32")
    run = tinylm.load(trained_run, device="cpu", **option).ready()
    assert run.dtype == torch.bfloat16
    kinds = kernels.linear_kernel_names(run.model)
    assert set(kinds) == {"int8pack" if "quantize" in option else "onednn-bf16"}
    prompt = reference.tokenizer.encode("ROMEO:\n")
    n = reference.model.cfg.context - len(prompt)  # fits the context: no sliding
    expected = generate_ids(reference.model, prompt, n, temperature=0)
    got = generate_ids(run.model, prompt, n, temperature=0, dtype=run.dtype)

    exact = decode_logits(reference.model, prompt, expected)
    approx = decode_logits(run.model, prompt, expected)  # the same tokens fed: the error at each step
    error = (approx - exact).abs().amax(dim=-1)
    top2 = exact.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    assert float(error.max()) <= TOLERANCE[option.get("quantize", option.get("dtype"))] * float(exact.abs().max())
    # greedy can only differ once float32's margin falls within twice the error
    decided = int((margin > 2 * error).int().cumprod(0).sum())
    assert decided >= 8, "the model's margins are too small for this test to say anything"
    assert got[:decided] == expected[:decided]


def test_int8_and_bfloat16_keep_the_held_out_loss_within_001_nats(trained_run, capsys):
    losses = {}
    for name, flags in (("float32", ["--dtype", "float32"]), ("bfloat16", ["--dtype", "bfloat16"]),
                        ("int8", ["--quantize", "int8"])):
        assert main(["eval", str(trained_run), "--device", "cpu", "--json", *flags]) == 0
        losses[name] = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])["loss"]
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.01
    assert abs(losses["int8"] - losses["float32"]) < 0.01


def test_sample_runs_with_each_precision_option(trained_run, capsys):
    outs = []
    for flags in (["--dtype", "float32"], ["--dtype", "bfloat16"], ["--quantize", "int8"]):
        assert main(["sample", str(trained_run), "--prompt", "KING", "--max-new-tokens", "12", "--temperature", "0",
                     "--device", "cpu", *flags]) == 0
        outs.append(capsys.readouterr().out)
    assert all(out.startswith("KING") and len(out.rstrip("\n")) == 4 + 12 for out in outs)


@pytest.mark.parametrize("flags, message", [
    (["--quantize", "int8", "--dtype", "float32"], "computes with bfloat16 activations"),
    (["--dtype", "float16"], "float16"),
])
def test_unsupported_precision_options_are_one_line_errors(trained_run, capsys, flags, message):
    assert main(["sample", str(trained_run), "--device", "cpu", "--max-new-tokens", "2", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_compile_takes_booleans_and_stream_says_when_it_prints_whole_texts(trained_run, capsys):
    assert tinylm.load(trained_run, device="cpu", compile=False).compile is False
    assert tinylm.load(trained_run, device="cpu", compile=True).compile is True
    with pytest.raises(ConfigError, match="use auto, on or off"):
        tinylm.load(trained_run, device="cpu", compile="yes")
    capsys.readouterr()
    assert main(["sample", str(trained_run), "--prompt", "A", "--max-new-tokens", "3", "--stream",
                 "--verbose", "--dtype", "float32"]) == 0
    out, err = capsys.readouterr()
    assert "generated ids (3)" in out and "--stream prints whole texts with --verbose" in err


def test_int8_on_a_device_without_its_kernels_is_refused():
    with pytest.raises(ConfigError, match="runs on CPUs and CUDA GPUs"):
        precision.resolve(torch.device("mps"), "auto", "int8")
    with pytest.raises(ConfigError, match="unknown quantization"):
        precision.resolve(torch.device("cpu"), "auto", "int4")


# --------------------------------------------------------------------------- decode kernels


def small_model(**options) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, context=16, n_layer=2, n_head=4, d_model=32, **options)
    cfg.validate()
    model = GPT(cfg).eval()
    with torch.no_grad():  # large weights: clear-cut next-token choices
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("dtype, quantize", [(torch.float32, "none"), (torch.bfloat16, "none"),
                                             (torch.bfloat16, "int8")])
def test_packing_keeps_names_parameters_and_results(dtype, quantize):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, context=16, n_layer=2, n_head=4, d_model=32)
    cfg.validate()
    model = precision.to_inference(GPT(cfg), torch.device("cpu"), dtype, quantize)
    names = list(model.state_dict())
    x = torch.randint(0, 61, (3, 7))
    with torch.inference_mode():
        before = model(x)[0]
    kernels.pack_for_decoding(model)
    with torch.inference_mode():
        after = model(x)[0]
    assert list(model.state_dict()) == names  # LoRA wrappers and state dicts see the same modules
    assert all(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if n.endswith(("qkv", "fc", "head")))
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # float32: summation order only
    torch.testing.assert_close(after.float(), before.float(), rtol=0, atol=tolerance * float(before.abs().max()))


def test_a_packed_weight_changed_in_place_is_repacked():
    model = precision.to_inference(small_model(), torch.device("cpu"), torch.bfloat16)
    kernels.pack_for_decoding(model)
    layer = model.blocks[0].mlp.fc
    assert layer.weight.dtype == torch.bfloat16 and layer.bias.dtype == torch.float32  # CPU: weight-only
    x = torch.randn(2, 32)
    with torch.no_grad():
        layer(x)
        layer.weight.add_(1.0)  # e.g. an adapter merged into it
        expected = torch.nn.functional.linear(x.bfloat16(), layer.weight).float() + layer.bias
        assert torch.equal(layer(x), expected)


@pytest.mark.slow
def test_compiled_and_eager_decode_give_identical_ids():
    model = small_model(pos="rope", n_kv_head=2)
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11]]
    options = [dict(temperature=0), dict(temperature=1.0, top_k=20, seed=3)]
    eager = [generate_ids(model, prompts, 40, **o) for o in options]  # 40 > context 16: windows slide
    step = DecodeStep(model)  # owned here: only engines given it decode through it
    compiled = [generate_ids(model, prompts, 40, step=step, **o) for o in options]
    assert generate_ids(model, prompts, 40, temperature=0) == eager[0]  # the model itself is unchanged
    # the server's engine decodes its two rows through the same compiled step (batch 2 again)
    engine = Engine(model, lambda ids: "", vocab_size=61, max_batch=2, device=torch.device("cpu"), step=step)
    assert engine.compiled is step and engine.cache.static
    events: list[list[int]] = [[], []]

    def collect(event):
        events[event.row].extend(t.token for t in event.tokens)

    engine.submit(Request([Row(p, GenerationConfig(max_new_tokens=40, temperature=0).validate())
                           for p in prompts], collect))
    while engine.running or engine.waiting:
        engine.step()
    # (2 rows; 1 while the server refills a row whose window slid)
    assert step.failed is None and step.warmup_s is not None and step.batches <= {1, 2}
    assert compiled == eager
    assert events == eager[0]


# --------------------------------------------------------------------------- the sampler


@given(probs=st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0)), min_size=1, max_size=300),
       seed=st.integers(0, 2**31))
@settings(max_examples=200, deadline=None)
def test_draw_tokens_never_draws_a_token_of_probability_zero(probs, seed):
    p = torch.tensor([probs])
    if float(p.sum()) == 0:
        p[0, -1] = 1.0
    token = int(draw_tokens(p, torch.Generator().manual_seed(seed)))
    assert p[0, token] > 0


def test_draw_tokens_follows_the_distribution():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05]])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([draw_tokens(probs, g) for _ in range(20_000)]), minlength=5).double()
    expected = 20_000 * probs[0].double()
    chi2 = float(((counts - expected)[expected > 0] ** 2 / expected[expected > 0]).sum())
    assert counts[1] == 0 and chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


def test_each_row_draws_from_its_own_generator():
    logits = torch.randn(3, 50)
    rows = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    together = sample_next(logits, 1.0, generator=rows)
    alone = [int(sample_next(logits[b:b + 1], 1.0, generator=torch.Generator().manual_seed(5 + b))) for b in range(3)]
    assert together.tolist() == alone


def test_a_batch_row_samples_what_it_samples_alone_with_seed_plus_its_index():
    model = small_model()
    prompts = [[1, 2, 3], [4], [5, 6]]
    batch = generate_ids(model, prompts, 12, temperature=1.0, seed=10)
    assert batch == [generate_ids(model, p, 12, temperature=1.0, seed=10 + b) for b, p in enumerate(prompts)]


def reference_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= p
    drop[:, 0] = False
    return torch.zeros_like(drop).scatter(-1, order, drop)


@given(seed=st.integers(0, 2**31), vocab=st.integers(65, 2000), p=st.floats(0.01, 0.999),
       spread=st.floats(0.1, 8.0))
@settings(max_examples=150, deadline=None)
def test_top_p_over_a_partial_sort_keeps_what_a_full_sort_keeps(seed, vocab, p, spread):
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
    kept = torch.isfinite(top_p_filter(logits, p))
    assert torch.equal(kept, ~reference_top_p(logits, p))


def test_prepare_casts_and_quantizes_a_copy_not_the_float_model():
    model = small_model()
    copy_ = precision.to_inference(copy.deepcopy(model), torch.device("cpu"), torch.bfloat16, "int8")
    assert kernels.is_quantized(copy_.blocks[0].attn.qkv.weight)
    assert model.tok_emb.weight.dtype == torch.float32 and not kernels.is_quantized(model.head.weight)
