"""Hugging Face tokenizers and Llama checkpoints built by the tests, with `tokenizers` and `transformers`
themselves (no download): the inputs of the hf tokenizer, Llama import and GGUF tests.

    byte_level_bpe   GPT-2-style byte-level BPE (GPT-2's regex), <|endoftext|> = bos = eos, no BOS added
    byte_level_variant  Llama-3-style (its regex, ignore_merges, BOS added) or SmolLM-style (digits split)
    sentencepiece    Llama-2-style BPE with byte fallback: <unk> <s> </s>, the 256 <0xNN> byte tokens,
                     "▁" for spaces (prepended), merges listing every split of every token (as transformers
                     writes tokenizer.json files converted from SentencePiece models), <s> added to inputs
    wordpiece        BERT-style WordPiece: lower-casing normalizer, [UNK] [CLS] [SEP] [PAD] [MASK]
    unigram          Unigram over Metaspace pieces (lossy: no byte fallback)
    save_llama       a randomly initialised LlamaForCausalLM saved by transformers (optionally bf16, sharded)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SAMPLE_TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, double  spaces and\n\nnewlines\n",
    "Café, naïve façade — résumé; Ærøskøbing über straße.",
    "日本語のテキストと中文字符，还有한국어。",
    "emoji: 😀👍🏽 🦙 ❤️ and symbols ∑ ≠ →",
    "I'm sure they'LL say 'Hello' -- 1234567 times!\r\n\tTabs\tand\tmore",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
]


@functools.cache
def _shakespeare() -> tuple[str, ...]:
    from tinylm.data.spec import read_source

    return tuple(d[:25_000] for d in read_source("shakespeare").documents()[:3])


def training_corpus() -> list[str]:
    """Real text (Shakespeare from the bundled corpus) plus the sample texts, for training test tokenizers."""
    return [*_shakespeare(), *SAMPLE_TEXTS]


def _save(tok: Tokenizer, directory: Path, config: dict[str, Any], specials: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **specials, **config}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return directory


def byte_level_bpe(directory: Path, vocab_size: int = 800) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    eot = "<|endoftext|>"
    return _save(tok, directory, {"add_bos_token": False},
                 {"bos_token": eot, "eos_token": eot, "unk_token": eot})


def byte_level_variant(directory: Path, style: str, vocab_size: int = 600) -> Path:
    """Byte-level BPE split like Llama 3 (its regex, ignore_merges, <|begin_of_text|> added to every
    input) or like SmolLM (digits one by one, then GPT-2's regex)."""
    from tinylm.tokenizers.hf import LLAMA3_PATTERN

    tok = Tokenizer(models.BPE())
    if style == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        specials = ["<|endoftext|>"]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    if style == "llama3":
        spec = json.loads(tok.to_str())
        spec["model"]["ignore_merges"] = True
        tok = Tokenizer.from_str(json.dumps(spec))
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                           special_tokens=[("<|begin_of_text|>", 0)])
    return _save(tok, directory, {}, {"bos_token": specials[0], "eos_token": specials[-1]})


def sentencepiece(directory: Path, vocab_size: int = 700) -> Path:
    """A Llama-2-style tokenizer.json: BPE with byte fallback over "▁"-joined text."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), show_progress=False, limit_alphabet=120)
    trainer_tok.train_from_iterator(training_corpus(), trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    order = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(specials)}
    for token, _ in order:
        vocab.setdefault(token, len(vocab))
    # every split of every token into two tokens is a merge, ordered by the token it makes (transformers'
    # SentencePieceExtractor), so BPE merging equals SentencePiece's best-scored-pair merging
    merges = sorted(((left, t[len(left):]) for t in vocab if t not in specials for left in
                     (t[:cut] for cut in range(1, len(t))) if left in vocab and t[len(left):] in vocab),
                    key=lambda pair: (vocab[pair[0] + pair[1]], vocab[pair[0]], vocab[pair[1]]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return _save(tok, directory, {"add_bos_token": True, "add_eos_token": False, "legacy": True},
                 {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def wordpiece(directory: Path, vocab_size: int = 600) -> Path:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return _save(tok, directory, {}, {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                                      "sep_token": "[SEP]", "mask_token": "[MASK]", "eos_token": "[SEP]"})


def unigram(directory: Path, vocab_size: int = 500) -> Path:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "</s>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return _save(tok, directory, {}, {"unk_token": "<unk>", "eos_token": "</s>"})


def save_llama(directory: Path, tokenizer_dir: Path | None, *, vocab_size: int, seed: int = 0, dtype: str = "float32",
               max_shard_size: str | None = None, std: float = 0.08, **config: Any) -> Any:
    """A random LlamaForCausalLM (weights drawn with `std`, so logits are spread) saved by transformers
    into `directory`, with the tokenizer files of `tokenizer_dir` beside it. Returns the float32 model."""
    import shutil

    import torch
    import transformers

    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-6)
    fields.update(config)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, std)
    saved = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    saved.save_pretrained(directory, **kwargs)
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            shutil.copy(f, directory / f.name)
    return saved.float()


__all__ = ["SAMPLE_TEXTS", "byte_level_bpe", "byte_level_variant", "save_llama", "sentencepiece", "training_corpus",
           "unigram", "wordpiece"]
