"""DPO preference tuning (issue 26): the objective against an independent implementation of the paper's
eq. 7 (and TRL's DPOTrainer where it is installed), preference records and their bad-input errors, the
reference model, config and CLI mapping; and (slow) exact resume, export of a DPO run, and end to end: a
rule the base does not follow learned from synthetic pairs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinylm.chat.templates import get_template
from tinylm.config import DPOConfig, LoRAConfig, ModelConfig, RunConfig
from tinylm.data.examples import IGNORE
from tinylm.data.preferences import Pairs, make_pairs, pad_pairs, read_pairs
from tinylm.errors import ConfigError, DataError
from tinylm.model import GPT, lora
from tinylm.tokenizers import train_tokenizer
from tinylm.training.dpo import DPOObjective, PairData

TEXT = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:!?'\n0123456789"
RECORDS = [
    {"prompt": "say lord", "chosen": "lord amen", "rejected": "lord king"},
    {"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour"}],
     "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "No."}]},
    {"prompt": "a longer prompt for the third pair", "chosen": "yes it is", "rejected": "no it is not at all"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer("char", [TEXT])


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def pairs_of(tmp_path: Path, tokenizer, records=RECORDS, window: int = 96):
    return make_pairs(read_pairs(str(write_jsonl(tmp_path / "pairs.jsonl", records))), tokenizer,
                      get_template("plain"), window + 1)


def tiny_model(tokenizer, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tokenizer.vocab_size, context=96, n_layer=2, n_head=2, d_model=32))


def dpo_config(method: str, **dpo) -> RunConfig:
    cfg = RunConfig()
    cfg.finetune.method, cfg.finetune.objective, cfg.finetune.base = method, "dpo", "/base"
    cfg.dpo = DPOConfig(**dpo)
    return cfg


# --------------------------------------------------------------------------- the paper's objective, written out


def paper_logp(model: torch.nn.Module, example) -> torch.Tensor:
    """log pi(y | x): one unpadded sequence, a plain forward, log_softmax, the response's targets gathered."""
    ids, labels = torch.from_numpy(example.ids), torch.from_numpy(example.labels)
    logits, _ = model(ids[None, :-1])
    logp = F.log_softmax(logits[0].float(), dim=-1)
    targets = labels[1:]
    rows = torch.nonzero(targets != IGNORE).flatten()
    return logp[rows, targets[rows]].sum()


def paper_loss(policy_logps, reference_logps, tokens, beta: float, loss: str, ls: float) -> torch.Tensor:
    """Rafailov et al. 2023, eq. 7: -E log sigma(beta log pi(yw)/ref(yw) - beta log pi(yl)/ref(yl)); with label
    smoothing ls the conservative form -(1-ls) log sigma(beta h) - ls log sigma(-beta h); IPO (Azar et al. 2023,
    eq. 17) on per-token averaged log-ratios (TRL): (h - 1/(2 beta))^2."""
    out = []
    for (pw, pl), (rw, rl), (nw, nl) in zip(policy_logps, reference_logps, tokens):
        if loss == "ipo":
            h = (pw - rw) / nw - (pl - rl) / nl
            out.append((h - 1 / (2 * beta)) ** 2)
        else:
            h = (pw - rw) - (pl - rl)
            out.append(-(1 - ls) * torch.log(torch.sigmoid(beta * h)) - ls * torch.log(torch.sigmoid(-beta * h)))
    return torch.stack(out).mean()


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("loss,ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_loss_and_gradients_equal_the_papers_objective(tokenizer, tmp_path, method, loss, ls):
    pairs, _ = pairs_of(tmp_path, tokenizer)
    model = tiny_model(tokenizer)
    cfg = dpo_config(method, beta=0.3, loss=loss, label_smoothing=ls)
    if method == "lora":
        lora.add_lora(model, LoRAConfig(r=4, dropout=0.0, targets="qkv,proj,fc,mlp_proj,head"))
        lora.set_active(model, "default")
    objective = DPOObjective(cfg, model, PairData(Pairs("pairs", "plain", pairs, pairs)))  # reference: the base
    reference_model = copy.deepcopy(model)
    with torch.no_grad():  # move the policy away from the reference
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    trainable = [p for p in model.parameters() if p.requires_grad]

    x, y = pad_pairs(pairs)
    ours = objective.loss(model, x, y)
    our_grads = torch.autograd.grad(ours, trainable)

    with torch.no_grad():
        if method == "lora":  # the reference is the model with its adapter switched off
            lora.set_active(model, None)
            ref = [(paper_logp(model, p.chosen), paper_logp(model, p.rejected)) for p in pairs]
            lora.set_active(model, "default")
        else:
            ref = [(paper_logp(reference_model, p.chosen), paper_logp(reference_model, p.rejected)) for p in pairs]
    policy = [(paper_logp(model, p.chosen), paper_logp(model, p.rejected)) for p in pairs]
    tokens = [(int((p.chosen.labels[1:] != IGNORE).sum()), int((p.rejected.labels[1:] != IGNORE).sum())) for p in pairs]
    theirs = paper_loss(policy, ref, tokens, 0.3, loss, ls)
    their_grads = torch.autograd.grad(theirs, trainable)

    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert abs(ours.item() - (0.69314718 if loss == "sigmoid" else 0)) > 1e-3  # policy != reference
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    metrics = objective.train_metrics(objective_procs(), torch.device("cpu"))
    rewards = [(0.3 * (pw - rw).item(), 0.3 * (pl - rl).item()) for (pw, pl), (rw, rl) in zip(policy, ref)]
    assert metrics["rewards/chosen"] == pytest.approx(sum(c for c, _ in rewards) / len(rewards), abs=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(sum(c - r for c, r in rewards) / len(rewards), abs=1e-5)
    assert metrics["rewards/accuracies"] == pytest.approx(sum(c > r for c, r in rewards) / len(rewards))


def objective_procs():
    from tinylm.training.distributed import Procs

    return Procs()


def test_adapters_disabled_is_the_base_and_restores_the_choice(tokenizer):
    model = tiny_model(tokenizer)
    x = torch.randint(0, tokenizer.vocab_size, (3, 10))
    base = model(x)[0]
    lora.add_lora(model, LoRAConfig(r=2, dropout=0.0, targets="qkv,fc"))
    lora.set_active(model, ["default", None, "default"])
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B["default"].normal_()
    with lora.adapters_disabled(model):
        torch.testing.assert_close(model(x)[0], base)
    assert all(layer.active == ["default", None, "default"] for layer in lora.lora_layers(model).values())
    assert not torch.allclose(model(x)[0], base)


# --------------------------------------------------------------------------- records


def test_string_and_conversational_records_encode_alike_and_train_on_the_response_only(tokenizer, tmp_path):
    pairs, counts = pairs_of(tmp_path, tokenizer, [
        {"prompt": "Hi", "chosen": "ok", "rejected": "no"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "ok"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
        RECORDS[2]])
    assert counts.kept == 3 and counts.dropped == 0
    a, b, multi = pairs
    assert a.chosen.ids.tolist() == b.chosen.ids.tolist() and a.rejected.labels.tolist() == b.rejected.labels.tolist()

    def trained(example) -> str:
        return tokenizer.decode([int(t) for t in example.labels if t != IGNORE])

    # char: no end-of-text token, so the reply's line break and the next turn's marker end it (as in fine-tuning)
    assert trained(a.chosen) == "ok\nUser:" and trained(a.rejected) == "no\nUser:"
    assert trained(multi.chosen) == "Blue.\nUser:"  # the prompt's own assistant turn ("Hello.") is not trained
    assert "Hello." in tokenizer.decode(multi.chosen.ids.tolist())


def test_a_prompt_longer_than_the_window_is_cut_from_the_left_and_a_long_response_dropped(tokenizer, tmp_path):
    long_prompt = {"prompt": "word " * 40, "chosen": "yes", "rejected": "no"}
    long_reply = {"prompt": "hi", "chosen": "yes " * 30, "rejected": "no"}
    pairs, counts = pairs_of(tmp_path, tokenizer, [long_prompt, long_reply, RECORDS[0]], window=48)
    assert (counts.kept, counts.truncated, counts.dropped) == (2, 1, 1)
    cut = pairs[0]
    assert len(cut.chosen) == 49 and len(cut.rejected) <= 49
    assert tokenizer.decode(cut.chosen.ids.tolist()).endswith("Assistant: yes\nUser:")


@pytest.mark.parametrize("record,fragment", [
    ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "\"chosen\" and \"rejected\" are the same response"),
    ({"prompt": "hi", "chosen": "", "rejected": "no"}, "the \"chosen\" response is empty"),
    ({"prompt": "hi", "chosen": "yes", "rejected": "   "}, "the \"rejected\" response is empty"),
    ({"prompt": "hi", "chosen": "yes"}, "\"rejected\" is missing"),
    ({"chosen": "yes", "rejected": "no"}, "\"prompt\" is missing (TRL's implicit-prompt records"),
    ({"prompt": "hi", "chosen": True, "rejected": "no"}, "\"chosen\" must be a string or a non-empty list of "
                                                         "assistant messages [{\"role\": \"assistant\", \"content\": "
                                                         "...}], got true"),
    ({"prompt": 5, "chosen": "yes", "rejected": "no"}, "\"prompt\" must be a string or a non-empty list"),
    ({"prompt": "hi", "chosen": [{"role": "user", "content": "x"}], "rejected": "no"}, "chosen[0] has role 'user'"),
    ({"prompt": [{"role": "user", "content": 3}], "chosen": "a", "rejected": "b"}, "prompt[0]: content must be a string"),
    ("[1, 2]", "line 2 is not a JSON object"),
])
def test_bad_pairs_are_one_line_errors_naming_the_line(tmp_path, record, fragment):
    path = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], record])
    with pytest.raises(DataError) as e:
        read_pairs(str(path))
    message = str(e.value)
    assert "\n" not in message and f"{path} line 2" in message and fragment in message, message


def test_responses_the_tokenizer_cannot_tell_apart_are_refused(tokenizer, tmp_path):
    with pytest.raises(DataError, match="line 1: \"chosen\" and \"rejected\" encode to the same tokens"):
        pairs_of(tmp_path, tokenizer, [{"prompt": "hi", "chosen": "caf\u00e9", "rejected": "caf\u00fc"}])


# --------------------------------------------------------------------------- config and command line


def test_old_configs_load_unchanged_and_flags_map_to_fields():
    from tinylm.cli.parser import build_parser

    old = RunConfig().to_dict()
    del old["dpo"], old["finetune"]["objective"]
    cfg = RunConfig.from_dict(old).validate()
    assert cfg.finetune.objective == "sft" and cfg.dpo == DPOConfig()
    args = vars(build_parser().parse_args(["finetune", "base", "--method", "dpo", "--full", "--data", "p.jsonl",
                                           "--beta", "0.5", "--loss", "ipo"]))
    assert (args["finetune.objective"], args["finetune.method"], args["dpo.beta"], args["dpo.loss"]) == (
        "dpo", "full", "0.5", "ipo")
    args = vars(build_parser().parse_args(["finetune", "base", "--method", "dpo", "--label-smoothing", "0.1"]))
    assert args["finetune.objective"] == "dpo" and args["finetune.method"] is None  # LoRA by default
    for change, fragment in ((dict(beta=0.0), "dpo.beta must be > 0"),
                             (dict(label_smoothing=0.5), "dpo.label_smoothing must be in [0, 0.5)"),
                             (dict(loss="ipo", label_smoothing=0.1), "applies to the sigmoid loss only")):
        with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            dpo_config("lora", **change).validate()
    bad = dpo_config("lora")
    bad.lora.train_biases = True
    with pytest.raises(ConfigError, match="adapters disabled"):
        bad.validate()


def test_pairs_and_the_objective_must_go_together(tmp_path):
    from tinylm.data.finetune import resolve_format

    pairs = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                                 {"role": "assistant", "content": "b"}]}])
    sft = RunConfig()
    sft.finetune.method, sft.data.source = "lora", str(pairs)
    with pytest.raises(ConfigError, match="holds preference pairs: fine-tune on them with --method dpo"):
        resolve_format(sft)
    dpo = dpo_config("lora")
    dpo.data.source = str(chats)
    with pytest.raises(ConfigError, match="--method dpo trains on preference pairs"):
        resolve_format(dpo)
    dpo.data.source = str(pairs)
    assert resolve_format(dpo) == "preference"


# --------------------------------------------------------------------------- TRL's DPOTrainer on the same batch


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_the_loss_equals_trl_dpotrainers_on_the_same_batch(tmp_path, loss):
    """TRL's DPOTrainer (its own tokenization, collation, forward of the GPT-2 export and loss) and tinylm's
    objective on the batch TRL collated, with the same policy and reference weights. (TRL 1.x's "sigmoid" loss
    no longer reads label_smoothing, so conservative DPO is checked against the paper's form above only.)"""
    ls = 0.0
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from hf_models import byte_level_bpe
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from tinylm.interop.gpt2 import gpt2_config, to_gpt2_state

    hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(byte_level_bpe(tmp_path / "tok", vocab_size=300))
    hf_tokenizer.pad_token = hf_tokenizer.eos_token
    torch.manual_seed(0)
    reference = GPT(ModelConfig(vocab_size=len(hf_tokenizer), context=64, n_layer=2, n_head=2, d_model=32,
                                mlp="gelu_tanh"))
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)

    def hf(model: GPT) -> GPT2LMHeadModel:
        out = GPT2LMHeadModel(GPT2Config(**gpt2_config(model.cfg, hf_tokenizer.eos_token_id)))
        out.load_state_dict(to_gpt2_state(model), strict=False)
        return out.eval()

    records = [r for r in RECORDS if isinstance(r["prompt"], str)]
    args = TRLConfig(  # float32 (TRL's default bf16 would compute the reference in bfloat16)
        output_dir=str(tmp_path / "trl"), beta=0.3, loss_type=[loss], label_smoothing=ls,
                     per_device_train_batch_size=len(records), report_to="none", use_cpu=True, max_length=None,
                     dataset_num_proc=None, save_strategy="no", bf16=False)
    trainer = DPOTrainer(model=hf(policy), ref_model=hf(reference), args=args, processing_class=hf_tokenizer,
                         train_dataset=datasets.Dataset.from_list(records))
    batch = next(iter(trainer.get_train_dataloader()))
    theirs = trainer.compute_loss(trainer.model, batch).item()

    ids, completion = batch["input_ids"].cpu(), batch["completion_mask"].cpu()
    x = ids[:, :-1]
    y = torch.where(completion[:, 1:].bool(), ids[:, 1:], IGNORE)
    cfg = dpo_config("full", beta=0.3, loss=loss, label_smoothing=ls)
    objective = DPOObjective(cfg, reference, PairData(Pairs("pairs", "plain", [], [])))  # reference: the copy
    policy.eval()
    ours = objective.loss(policy, x, y).item()
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert objective.train_metrics(objective_procs(), torch.device("cpu"))["rewards/margins"] == pytest.approx(
        trainer._metrics["train" if trainer.model.training else "eval"]["rewards/margins"][-1], abs=1e-5)


# --------------------------------------------------------------------------- slow: training, resume, export, end to end

WORDS = ["lord", "king", "good", "fair", "love", "dear", "sire", "wife", "life", "hand", "song", "fire", "rose", "moon",
         "star", "gold", "time", "hope", "face", "hour", "duke", "maid", "lady", "word", "home", "land", "sea", "sun",
         "day", "eye", "man", "boy", "art", "heart", "night", "death", "grace", "queen", "sweet", "honour"]
TRAIN_WORDS, HELD_WORDS = WORDS[:30], WORDS[30:]  # held-out prompts ask for words no training pair has


def rule_pairs(words: list[str], n: int, seed: int) -> list[dict]:
    """"say W" -> chosen "W amen" (the rule: the answer ends with "amen"), rejected "W <another word>"."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        w = words[i % len(words)] if n <= len(words) * 4 else rng.choice(words)
        out.append({"prompt": f"say {w}", "chosen": f"{w} amen",
                    "rejected": f"{w} {rng.choice([v for v in WORDS if v != w])}"})
    return out


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, shared_data) -> Path:
    """A tiny char model pre-trained on Tiny Shakespeare for 300 steps (a few seconds), context 64."""
    from tinylm.config import load_preset
    from tinylm.training import train

    cfg = load_preset("tiny-test")
    text = tmp_path_factory.mktemp("text") / "shakespeare.txt"  # the first 300,000 characters: quick to prepare
    text.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:300_000],
                    encoding="utf-8")
    cfg.data.source = str(text)
    cfg.model.context, cfg.model.d_model = 64, 48
    cfg.train.out_dir = str(tmp_path_factory.mktemp("dpo") / "base")
    cfg.train.max_steps, cfg.train.eval_interval, cfg.train.batch_size = 300, 300, 16
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("pairs")
    return (write_jsonl(d / "train.jsonl", rule_pairs(TRAIN_WORDS, 300, 0)),
            write_jsonl(d / "held.jsonl", rule_pairs(HELD_WORDS, 40, 1)))


def dpo_run_config(base: Path, data: Path, out: Path, **train):
    from tinylm.training.finetune import finetune_config

    cfg = finetune_config(base, str(data))
    cfg.finetune.objective = "dpo"
    cfg.train.out_dir, cfg.train.epochs, cfg.train.dtype = str(out), 0.0, "float32"
    for key, value in {"max_steps": 150, "eval_interval": 150, "lr": 1e-2, "min_lr": 1e-3, **train}.items():
        setattr(cfg.train, key, value)
    cfg.lora.dropout, cfg.lora.targets = 0.0, "qkv,proj,fc,mlp_proj"
    return cfg


def follows_rule(run_dir: Path) -> float:
    """The share of held-out prompts whose greedy reply's first line ends with "amen"."""
    import tinylm

    run = tinylm.load(run_dir, device="cpu", dtype="float32")
    replies = [run.chat([{"role": "user", "content": f"say {w}"}], template="plain", max_new_tokens=16,
                        temperature=0) for w in HELD_WORDS]
    return sum(r.strip().split("\n")[0].endswith("amen") for r in replies) / len(replies)


@pytest.mark.slow
def test_dpo_teaches_a_rule_the_base_does_not_follow(base_run, pair_files, tmp_path):
    """End to end (BENCHMARKS.md "DPO"): held-out preference accuracy from about chance to >= 90%, and greedy
    replies to held-out prompts follow the rule more often than the base's."""
    from tinylm.config import EvalConfig
    from tinylm.evaluation.preferences import evaluate_pairs
    from tinylm.training import train

    train_pairs, held = pair_files
    options = dict(pairs=str(held), device="cpu", dtype="float32")
    before = evaluate_pairs(base_run, EvalConfig(**options))  # no base of its own: raw log-probabilities
    follows_before = follows_rule(base_run)
    result = train(dpo_run_config(base_run, train_pairs, tmp_path / "dpo"))
    after = evaluate_pairs(result.run_dir, EvalConfig(**options))  # against its base, the adapter disabled
    follows_after = follows_rule(result.run_dir)
    print(f"DPO end to end: accuracy {before.accuracy:.3f} -> {after.accuracy:.3f}, margin {after.margin:.3f}; "
          f"rule followed {follows_before:.2f} -> {follows_after:.2f}")
    assert 0.2 <= before.accuracy <= 0.8 and after.accuracy >= 0.9
    assert follows_after > follows_before
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(rows[0])
    assert rows[-1]["eval_rewards/accuracies"] >= 0.9 and (result.run_dir / "loss.png").is_file()
    evals = [json.loads(line) for line in (result.run_dir / "evals.jsonl").read_text().splitlines()]
    assert evals[-1]["split"] == "pairs" and evals[-1]["accuracy"] == after.accuracy


@pytest.mark.slow
def test_resumed_dpo_run_equals_the_uninterrupted_run(base_run, pair_files, tmp_path, monkeypatch, capsys):
    from test_training import TIMING, Crash, crash_at_step, metrics

    from tinylm.cli import main
    from tinylm.model.lora import adapter_state
    from tinylm.training import train

    import tinylm

    def cfg(name: str):
        c = dpo_run_config(base_run, pair_files[0], tmp_path / name, max_steps=10, eval_interval=4, log_interval=2)
        c.lora.dropout = 0.1  # dropout masks come from the checkpointed RNG
        return c

    straight = train(cfg("straight")).run_dir
    crash_at_step(monkeypatch, 6)
    with pytest.raises(Crash):
        train(cfg("crashed"))
    monkeypatch.undo()
    assert main(["finetune", "--resume", str(tmp_path / "crashed"), "--beta", "0.5"]) == 1  # refused before any work
    assert "dpo.beta cannot change when resuming" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(tmp_path / "crashed")]) == 0
    a, b = (tinylm.load(d, checkpoint="latest", device="cpu").model for d in (straight, tmp_path / "crashed"))
    assert all(torch.equal(v, adapter_state(b)[k]) for k, v in adapter_state(a).items())
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(straight)] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in metrics(tmp_path / "crashed")]


@pytest.mark.slow
def test_full_dpo_run_and_exports_of_a_lora_dpo_run(base_run, pair_files, tmp_path, capsys):
    """--full trains every weight against a frozen copy of the base (a standalone run); a LoRA DPO run exports
    merged to transformers and as a PEFT adapter, both giving the run's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import tinylm
    from tinylm.cli import main
    from tinylm.run import MODEL_FILE

    full = tmp_path / "full"
    assert main(["finetune", str(base_run), "--method", "dpo", "--full", "--data", str(pair_files[0]), "--out",
                 str(full), "--max-steps", "6", "--lr", "1e-3", "--beta", "0.2", "--loss", "ipo"]) == 0
    out = "".join(capsys.readouterr())
    assert "dpo     ipo loss, beta 0.2, reference a frozen copy of the base's weights" in out
    assert (full / MODEL_FILE).is_file() and tinylm.load(full).config.finetune.method == "full"
    assert main(["eval", str(full), "--pairs", str(pair_files[1])]) == 0
    assert "against the base run" in "".join(capsys.readouterr())

    lora_run = tmp_path / "lora"
    assert main(["finetune", str(base_run), "--method", "dpo", "--data", str(pair_files[0]), "--out", str(lora_run),
                 "--max-steps", "20", "--lr", "1e-2", "--lora-targets", "qkv,fc"]) == 0
    assert main(["eval", str(lora_run)]) == 0  # a DPO run's own validation pairs
    assert "preference accuracy" in "".join(capsys.readouterr())
    for args in (["export", str(lora_run), "--format", "hf", "--out", str(tmp_path / "merged")],
                 ["export", str(base_run), "--format", "hf", "--out", str(tmp_path / "base_hf")],
                 ["export", str(lora_run), "--format", "peft", "--out", str(tmp_path / "adapter")]):
        assert main(args) == 0
    run = tinylm.load(lora_run, device="cpu", dtype="float32")
    x = torch.tensor([run.tokenizer.encode("User: say queen\nAssistant:")])
    expected = run.model(x)[0]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base_hf"),
                                        tmp_path / "adapter").eval()
    with torch.no_grad():
        for model in (merged, adapted):
            torch.testing.assert_close(model(x).logits, expected, atol=1e-4, rtol=1e-4)
