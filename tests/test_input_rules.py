"""Input rules (docs/input-rules.md): text that encodes to no tokens, numbers that are NaN, infinite
or extreme, ids that are never generated, and advice that names commands that work."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinylm
from tinylm.cli import main
from tinylm.config import EvalConfig, ModelConfig, RunConfig, SampleConfig, load_preset
from tinylm.errors import ConfigError, DataError, TinylmError
from tinylm.generation import GenerationConfig, generate_ids, sample_next, stream_ids
from tinylm.errors import EmptyInputError
from tinylm.config.fields import check_fields, check_range
from tinylm.tokenizers.prompt import encode_text
from tinylm.model import GPT
from tinylm.tokenizers import train_tokenizer
from tinylm.training import train

TEXT = ("Once upon a time there was a little dog named Spot. Spot liked to run in the park.\n"
        "One day Spot saw a big red ball. \"Can I play?\" asked Spot. The girl said yes.\n") * 40


def tiny(out: Path, source: Path, tokenizer: str, **train_options) -> RunConfig:
    cfg = load_preset("tiny-test")
    cfg.data.source, cfg.data.tokenizer, cfg.train.out_dir = str(source), tokenizer, str(out)
    cfg.model.context, cfg.model.n_layer, cfg.model.d_model = 16, 1, 16
    cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_tokens, cfg.train.log_interval = 3, 3, 256, 1
    for key, value in train_options.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input-rules") / "stories.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def word_run(tmp_path_factory, corpus) -> Path:
    return train(tiny(tmp_path_factory.mktemp("runs") / "word", corpus, "word")).run_dir


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, corpus) -> Path:
    return train(tiny(tmp_path_factory.mktemp("runs") / "char", corpus, "char")).run_dir


# --------------------------------------------------------------------------- text that encodes to nothing


def test_encode_text_rule() -> None:
    word = train_tokenizer("word", [TEXT])
    assert word.encode(" \t ") == [] and word.encode(" \n") == [word.encode("\n")[0]]  # a line break is a word
    assert encode_text(word, " \t ") == encode_text(word, "") == word.start_ids() == [word.bos_id]
    assert encode_text(word, "Spot ran") == word.encode("Spot ran")
    with pytest.raises(EmptyInputError, match=r"^data.jsonl line 3: choice 2 encodes to no tokens \(' '"):
        encode_text(word, " ", item="data.jsonl line 3: choice 2", empty="error")
    char = train_tokenizer("char", [TEXT])
    assert encode_text(char, "") == char.start_ids() and encode_text(char, " ") == char.encode(" ")


def test_whitespace_prompt_is_the_empty_prompt_everywhere(word_run: Path, capsys) -> None:
    """`tinylm sample RUN --prompt " "` (the issue's example) and the Python API, one prompt or a batch."""
    options = ["--max-new-tokens", "6", "--seed", "5"]
    assert main(["sample", str(word_run), "--prompt", " ", *options]) == 0
    spaced = capsys.readouterr().out
    assert main(["sample", str(word_run), "--prompt", "", *options]) == 0
    assert spaced == " " + capsys.readouterr().out
    assert main(["sample", str(word_run), "--prompt", "\t ", "--stream", *options]) == 0
    run = tinylm.load(word_run)
    empty = run.generate("", max_new_tokens=6, seed=5)
    assert run.generate("   ", max_new_tokens=6, seed=5) == empty
    assert "".join(run.stream(" \t ", max_new_tokens=6, seed=5)) == empty
    assert run.complete("\t", max_new_tokens=2, seed=5)[0].prompt_ids == run.tokenizer.start_ids()
    batch = run.generate([" ", "Spot saw", ""], max_new_tokens=6, seed=5, temperature=0)
    assert batch[0] == batch[2] == run.generate("", max_new_tokens=6, temperature=0)
    assert run.generate(" ", beams=2, max_new_tokens=3) == run.generate("", beams=2, max_new_tokens=3)


def test_engine_refuses_prompts_without_ids_in_one_line(word_run: Path) -> None:
    run = tinylm.load(word_run)
    with pytest.raises(EmptyInputError, match="prompt 2 of 2 has no token ids; an empty prompt is the tokenizer's"):
        generate_ids(run.model, [[5], []], max_new_tokens=2)
    with pytest.raises(EmptyInputError, match="at least one prompt"):
        generate_ids(run.model, [], max_new_tokens=2)
    with pytest.raises(ConfigError, match=r"token id 100000, outside the model's vocabulary"):
        generate_ids(run.model, [3, 100000], max_new_tokens=2)
    with pytest.raises(ConfigError, match="must be a GenerationConfig or max_new_tokens"):
        generate_ids(run.model, [3], 1e9)
    with pytest.raises(EmptyInputError, match="the prompt must be text or a list of texts, got NoneType"):
        run.generate(None)


def test_a_run_without_weights_advises_overwrite(word_run: Path, tmp_path: Path, capsys) -> None:
    half = tmp_path / "half"
    shutil.copytree(word_run, half)
    for name in ("model.safetensors", "best.safetensors"):
        (half / name).unlink()
    assert main(["sample", str(half)]) == 1
    assert f"never reached its first checkpoint; start it again with your training command and --out {half} " \
           "--overwrite" in capsys.readouterr().err


def test_evaluation_items_that_encode_to_nothing(word_run: Path, tmp_path: Path, capsys) -> None:
    lines = {"choices": [{"context": "Spot saw", "choices": ["a ball", "the park"], "label": 0},
                         {"context": "Spot saw", "choices": ["a ball", " \t "], "label": 0}],
             "cloze": [{"context": "Spot saw a big red", "continuation": "ball"},
                       {"context": "   ", "continuation": "Spot"},
                       {"context": "Spot", "continuation": "  "}],
             "hellaswag": [{"ctx": "Spot saw", "endings": ["a ball", "", "b", "c"], "label": 0}]}
    expected = {"choices": "line 2: choice 2 encodes to no tokens", "cloze": "line 3: the continuation encodes to no",
                "hellaswag": "line 1: choice 2 encodes to no tokens"}
    for task, records in lines.items():
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        capsys.readouterr()
        assert main(["eval", str(word_run), f"--{task}", str(path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after any warnings about unknown words
        assert err.startswith("error: ") and f"{path.name} {expected[task]}" in err, err
    # a context of whitespace is the empty context: the item is scored
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps({"context": " \t", "continuation": "Spot"}) + "\n")
    assert main(["eval", str(word_run), "--cloze", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == 1
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t \n")
    assert main(["eval", str(word_run), "--text", str(blank)]) == 1
    assert "blank.txt has no text in it (it is empty or only whitespace)" in capsys.readouterr().err


# --------------------------------------------------------------------------- numbers

SPECIAL_NUMBERS = [math.nan, math.inf, -math.inf, 0, 0.0, -0.0, -1, 1, 0.5, 5e-324, 1e-45, 1e-30, 1e30, 1e300,
                   2**40, 2**62, 2**70, True, "1"]


def test_check_helpers_messages() -> None:
    with pytest.raises(ConfigError, match=r"^top_p must be in \(0, 1\], got 1.5$"):
        check_range("top_p", 1.5, gt=0, le=1)
    with pytest.raises(ConfigError, match=r"^x must be >= 0 \(0 = off\), got nan$"):
        check_range("x", math.nan, ge=0, note=" (0 = off)")
    with pytest.raises(ConfigError, match="^max_new_tokens must be an integer, got 2.5$"):
        check_fields(GenerationConfig(max_new_tokens=2.5))
    with pytest.raises(ConfigError, match="^model.context must be an integer, got True$"):
        check_fields(ModelConfig(context=True), "model.")
    with pytest.raises(ConfigError, match="^temperature must be a finite number, got inf$"):
        GenerationConfig(temperature=math.inf).validate()


@pytest.fixture(scope="module")
def tiny_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=12, context=8, n_layer=1, n_head=2, d_model=8)).eval()
    with torch.no_grad():  # sharp logits, so overflow in the sampler's math would show
        model.tok_emb.weight.mul_(40)
    return model


NUMERIC_GENERATION = [f for f, t in GenerationConfig.__annotations__.items() if t in ("int", "float", "int | None")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.dictionaries(st.sampled_from(NUMERIC_GENERATION), st.sampled_from(SPECIAL_NUMBERS), min_size=1,
                               max_size=3))
def test_generation_options_error_cleanly_or_give_valid_ids(tiny_model: GPT, options: dict) -> None:
    """NaN, infinities, 0, negatives, subnormals, huge values and wrong types for every numeric
    generation option: a one-line ConfigError, or valid ids (never a suppressed one)."""
    try:
        cfg = GenerationConfig(**options).validate()
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    suppress = [3]
    if cfg.beams > 1:
        cfg = cfg.replace(max_new_tokens=min(cfg.max_new_tokens, 4))
        ids = [i for row in [generate_ids(tiny_model, [1, 2], cfg, suppress_ids=suppress)] for i in row]
    else:  # the first few ids of a stream: max_new_tokens may be huge
        ids = list(itertools.islice(stream_ids(tiny_model, [1, 2], cfg, suppress_ids=suppress), 4))
        assert len(ids) == min(4, cfg.max_new_tokens)
    assert all(0 <= i < 12 and i not in suppress for i in ids), (options, ids)


@settings(max_examples=40, deadline=None)
@given(temperature=st.sampled_from([5e-324, 1e-45, 1e-40, 1e-30, 1e-6, 0.7, 1e30, 1e300, 3.5e38]),
       penalty=st.sampled_from([1.0, 5e-324, 1e-40, 1e-20, 1.5, 1e20, 1e300]),
       scale=st.sampled_from([1.0, 1e4, 1e30, 3e38]), top_p=st.sampled_from([1.0, 5e-324, 0.5, 1 - 1e-16]),
       min_p=st.sampled_from([0.0, 5e-324, 0.5, 1 - 1e-16]), top_k=st.sampled_from([0, 1, 3, 2**40]),
       seed=st.integers(0, 2**63 - 1))
def test_sampler_math_stays_finite(temperature, penalty, scale, top_p, min_p, top_k, seed) -> None:
    """The sampler itself: logits near the float32 limits, tiny/huge temperatures and penalties."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(4, 10, generator=g) * scale).clamp(-3.4e38, 3.4e38)
    logits[0] = logits[0, 0]  # a row of ties
    seen = torch.rand(4, 10, generator=g) < 0.5
    suppress = torch.zeros(10, dtype=torch.bool)
    suppress[[2, 7]] = True
    ids = sample_next(logits, temperature, top_k, g, top_p=top_p, min_p=min_p, repetition_penalty=penalty,
                      seen=seen, suppress=suppress)
    assert ids.shape == (4,) and all(0 <= i < 10 and i not in (2, 7) for i in ids.tolist())


def test_temperature_edges_are_defined() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 5.0 - 1e-3]])
    g = torch.Generator().manual_seed(0)
    # a temperature float32 cannot tell from 0 is greedy; a tiny one samples the likeliest
    assert sample_next(logits, 1e-46, generator=g).item() == 1
    assert {sample_next(logits, 1e-30, generator=g).item() for _ in range(20)} == {1}
    # a huge temperature is uniform over the tokens
    assert {sample_next(logits, 1e300, generator=g).item() for _ in range(200)} == {0, 1, 2, 3}


def _numeric_run_fields() -> list[str]:
    cfg = RunConfig()
    return [f"{section}.{name}" for section in ("model", "data", "train")
            for name, value in vars(getattr(cfg, section)).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


RUN_FIELDS = _numeric_run_fields()
PER_STEP_WORK = {"train.grad_accum", "train.batch_tokens"}  # huge = a step of that many micro-batches


@pytest.fixture(scope="module")
def hellaswag_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag.jsonl"
    path.write_text(json.dumps({"ctx": "Spot saw", "endings": ["a ball", "a dog", "the park", "red"], "label": 0})
                    + "\n")
    return path


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(RUN_FIELDS), value=st.sampled_from(SPECIAL_NUMBERS))
def test_run_config_numbers_error_cleanly_or_train_a_finite_step(key, value, corpus, hellaswag_file, tmp_path,
                                                                    monkeypatch) -> None:
    """Every numeric field of the training config (model, data, train): a one-line ConfigError
    before any work, or a run of at least one step with a finite loss and finite weights."""
    from tinylm.training import trainer as trainer_module

    out = tmp_path / f"run-{abs(hash((key, repr(value))))}"
    cfg = tiny(out, corpus, "char", max_steps=2, eval_interval=1, hellaswag_file=str(hellaswag_file))
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    try:
        cfg.validate()
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    if key in PER_STEP_WORK and isinstance(value, (int, float)) and value > 1000:
        return  # valid and well defined, but a run of that size: the check above is the point
    monkeypatch.setattr(trainer_module.Trainer, "stop_reason",  # one step at most, whatever the limits say
                        lambda self, requested: "max_steps" if self.step >= 1 else None)
    threads = torch.get_num_threads()
    try:
        result = train(cfg, overwrite=True)
    except TinylmError as e:  # a clean refusal (memory, data too small, divergence), one line
        assert "\n" not in str(e), e
        assert not out.exists() or (out / "train_state.pt").is_file()
        return
    finally:
        torch.set_num_threads(threads)
    assert result.step == 1 and math.isfinite(result.val_loss)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r.get("train_loss", r.get("val_loss", 0))) for r in rows)


def _numeric_fields(cfg) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), (int, float))
            and not isinstance(getattr(cfg, f.name), bool)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "2", None])
def test_every_numeric_field_refuses_non_finite_values(value) -> None:
    """Every numeric field of every config: GenerationConfig (sampling), SampleConfig, EvalConfig
    and RunConfig's model, data and train sections."""
    checked = 0
    for make in (GenerationConfig, SampleConfig, EvalConfig):
        for name in _numeric_fields(make()) + (["seed"] if make is not EvalConfig else []):
            cfg = make()
            setattr(cfg, name, value)
            if value is None and name == "seed":
                continue  # seed None: a fresh random seed
            with pytest.raises(ConfigError, match=rf"^(eval\.)?{name} must be"):
                cfg.validate()
            checked += 1
    for section in ("model", "data", "train"):
        for name in _numeric_fields(getattr(RunConfig(), section)):
            cfg = RunConfig()
            setattr(getattr(cfg, section), name, value)
            with pytest.raises(ConfigError, match=rf"^{section}\.{name} must be"):
                cfg.validate()
            checked += 1
    assert checked > 60


def test_integers_in_float_fields_are_stored_as_floats() -> None:
    """`cfg.train.beta1 = 0` from Python (or an integer in JSON) is a float after validation:
    torch's optimizers refuse betas that mix int and float."""
    checked = 0
    for section in ("model", "data", "train", "finetune", "lora"):
        part = getattr(RunConfig(), section)
        floats = [f.name for f in dataclasses.fields(part) if isinstance(getattr(part, f.name), float)]
        for name in floats:
            cfg = RunConfig(data=dataclasses.replace(RunConfig().data, source="x.txt"))
            setattr(getattr(cfg, section), name, 0)
            try:
                cfg.validate()
            except ConfigError:
                continue  # 0 out of range for this field: refused, the point is elsewhere
            assert type(getattr(getattr(cfg, section), name)) is float, f"{section}.{name}"
            checked += 1
    for make in (GenerationConfig, SampleConfig):
        cfg = make(temperature=1, top_p=1)
        cfg.validate()
        assert type(cfg.temperature) is float and type(cfg.top_p) is float
    assert checked > 5
    cfg = RunConfig(data=dataclasses.replace(RunConfig().data, source="x.txt"))
    cfg.train.beta1, cfg.train.beta2 = 0, 0
    cfg.validate()
    from tinylm.training.optim import build_optimizers  # the consumer that refused ints

    model = GPT(ModelConfig(vocab_size=16, context=8, n_layer=1, n_head=2, d_model=16))
    (adam,) = build_optimizers(model, cfg.train, torch.device("cpu"))
    assert adam.param_groups[0]["betas"] == (0.0, 0.0)


def test_non_finite_values_are_refused_on_every_route(word_run: Path, tmp_path: Path, capsys) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("[train]\nlr = nan\n")
    config = tmp_path / "run"
    shutil.copytree(word_run, config)
    saved = json.loads((config / "config.json").read_text())
    saved["model"]["rope_base"] = math.inf
    (config / "config.json").write_text(json.dumps(saved))  # Infinity: what json writes for inf
    for argv, fragment in ((["train", "--config", str(toml)], "train.lr must be a finite number, got nan"),
                           (["train", "--set", "train.beta1=-inf"], "train.beta1 must be a finite number"),
                           (["train", "--max-steps", "1e400"], "train.max_steps expects an integer"),
                           (["sample", str(config)], "model.rope_base must be a finite number, got inf")):
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and fragment in err, err
    run = tinylm.load(word_run)
    with pytest.raises(ConfigError, match="^repetition_penalty must be a finite number, got nan$"):
        run.generate("Spot", repetition_penalty=math.nan)


def test_extreme_sizes_are_refused_before_allocating(corpus, tmp_path) -> None:
    for key, value in (("model.n_layer", 2**40), ("model.context", 2**40), ("train.batch_size", 2**50)):
        cfg = tiny(tmp_path / "run", corpus, "char")
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
        with pytest.raises(ConfigError, match="need at least .* GiB, more than this cpu device has"):
            train(cfg)
        assert not (tmp_path / "run").exists()


def test_sample_and_eval_flags_refuse_non_finite_values(word_run: Path, capsys) -> None:
    for argv, fragment in ((["sample", str(word_run), "--temperature", "nan", "--max-new-tokens", "1"],
                            "temperature must be a finite number, got nan"),
                           (["sample", str(word_run), "--top-p", "inf"], "top_p must be a finite number"),
                           (["sample", str(word_run), "--beams", "100000"], "beams must be in [1, 1024]"),
                           (["eval", str(word_run), "--batch-size", "0"], "eval.batch_size must be >= 1"),
                           (["eval", str(word_run), "--limit", "-3", "--cloze", "x.jsonl"], "eval.limit must be >= 0")):
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and fragment in err, err
    assert SampleConfig(num_samples=2**62).validate().num_samples == 2**62


# --------------------------------------------------------------------------- ids never generated


def test_generation_never_emits_suppressed_ids_unless_asked(char_run: Path) -> None:
    """A char model made to prefer <unk> (never a training target) still never writes it, with
    sampling, greedy decoding, streaming and beam search; suppress_tokens=[] lets it through."""
    run = tinylm.load(char_run)
    unk = run.tokenizer.unk_id
    assert run.tokenizer.suppressed_ids == {unk}

    def prefer_unk(module, inputs, logits):
        logits = logits.clone()
        logits[..., unk] += 1e4
        return logits

    handle = run.model.head.register_forward_hook(prefer_unk)  # every decode path ends in the head
    try:
        for options in ({"temperature": 0.8, "seed": 1}, {"temperature": 0, "use_cache": False}, {"beams": 2}):
            completion = run.complete("Spot", max_new_tokens=6, **options)[0]
            assert unk not in completion.ids and "\ufffd" not in completion.text, options
        assert "\ufffd" not in "".join(run.stream("Spot", max_new_tokens=6, seed=2))
        asked = run.complete("Spot", max_new_tokens=3, temperature=0, suppress_tokens=[])[0]
        assert asked.ids == [unk] * 3
    finally:
        handle.remove()
    word = train_tokenizer("word", [TEXT])
    assert word.suppressed_ids == {0, 1, 2}  # <pad>, <unk>, <sos>
    assert train_tokenizer("gpt2", []).suppressed_ids == set()


def test_num_return_sequences_without_beams_points_to_num_samples(word_run: Path, capsys) -> None:
    assert main(["sample", str(word_run), "--num-return-sequences", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--num-samples N" in err and "[prompt] * N" in err and "\n" not in err
    with pytest.raises(ConfigError, match="raise beams"):
        GenerationConfig(beams=2, num_return_sequences=3).validate()


def test_eval_of_a_run_trained_on_a_data_dir_names_no_empty_source(corpus, tmp_path, capsys) -> None:
    from tinylm.data.prepare import prepare

    data = prepare(str(corpus), "char", tmp_path / "data")
    cfg = tiny(tmp_path / "run", corpus, "char")
    cfg.data.source, cfg.data.dir = "", str(data)
    train(cfg)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "()" not in err and f"split of the run's data in {data}" in err


def test_prepare_refuses_text_of_only_whitespace(tmp_path, capsys) -> None:
    path = tmp_path / "blank.txt"
    for content in ("", " \n\t\n", "<|endoftext|>\n<|endoftext|>\n"):
        path.write_text(content)
        for tokenizer in ("char", "word"):
            capsys.readouterr()
            assert main(["prepare", str(path), "--tokenizer", tokenizer, "--out", str(tmp_path / "d")]) == 1
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert err.startswith("error: ") and "blank.txt" in err and ("empty" in err or "no text" in err), err
    with pytest.raises(DataError):
        main(["prepare", str(path), "--debug", "--out", str(tmp_path / "d")])


def test_a_corrupt_run_config_is_a_one_line_error(word_run: Path, tmp_path: Path, capsys) -> None:
    """config.json replaced by binary bytes, by JSON of another shape, or cut short: each command that
    reads the run says so in one line (no traceback), naming the file."""
    for name, content in (("binary", b"\x80\x81GGUF\x00"), ("list", b"[1, 2]"), ("cut", b'{"model": {')):
        run = tmp_path / name
        shutil.copytree(word_run, run)
        (run / "config.json").write_bytes(content)
        for argv in (["sample", str(run)], ["eval", str(run)], ["finetune", str(run), "--data", "x.txt",
                                                                 "--out", str(tmp_path / f"ft-{name}")]):
            capsys.readouterr()
            assert main(argv) == 1
            err = capsys.readouterr().err.strip()
            assert "config.json is corrupt" in err and len(err.splitlines()) == 1, (argv, err)


def test_weights_that_overflow_the_forward_are_a_divergence_not_a_checkpoint(corpus, tmp_path) -> None:
    """Finite weights can still give non-finite logits (here: one step at lr 1e12): the validation loss
    is then NaN, and the run stops in one line before that step is saved, instead of finishing."""
    out = tmp_path / "run"
    cfg = tiny(out, corpus, "char", max_steps=1, eval_interval=1, lr=1e12)
    cfg.train.weight_decay = 0.0
    with pytest.raises(TinylmError, match="the validation loss became nan at step 1") as info:
        train(cfg)
    assert "\n" not in str(info.value) and "lower learning rate" in str(info.value)
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_decoupled_weight_decay_that_flips_the_weights_is_refused(corpus, tmp_path, optimizer: str) -> None:
    cfg = tiny(tmp_path / "run", corpus, "char", max_steps=1)
    cfg.train.optimizer, cfg.train.weight_decay = optimizer, 1e30
    with pytest.raises(ConfigError, match="use a weight decay below"):
        cfg.validate()
    cfg.train.weight_decay = 0.1
    cfg.validate()
