"""The run's configuration: `RunConfig` = model, data, train, finetune, lora and dpo sections (typed dataclasses).

A run is described by one `RunConfig`. It is filled, in order, from the dataclass defaults, a preset
(presets.py), an optional user TOML file, and command-line flags; the resolved result is saved as
`config.json` in the run directory and is enough to rebuild the model (its paths recorded absolute:
`absolute_paths`). Values are type-checked at every step (fields.py), so a typo or a wrongly typed
value is a one-line `ConfigError` before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from tinylm import fileio
from tinylm.config.fields import FLOAT32_TINY, check_fields, check_range, require, update

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "adam", "muon")
SCHEDULES = ("cosine", "wsd", "constant")
ENCODING_ERRORS = ("strict", "replace")
SPLIT_METHODS = ("tail", "shuffle")
SAMPLING = ("random", "permutation")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "swiglu")
FINETUNE_METHODS = ("", "lora", "full")
FINETUNE_FORMATS = ("auto", "text", "instruction", "chat", "preference")
FINETUNE_OBJECTIVES = ("sft", "dpo")  # next-token loss on the data | preference pairs (DPO, dpo.* settings)
DPO_LOSSES = ("sigmoid", "ipo")
LORA_TARGETS = ("qkv", "proj", "fc", "mlp_proj", "head")  # the model's linear layers by short name (model/lora.py)
MAX_THREADS = 1024  # train.threads: CPU threads per process
MAX_WORKERS = 256  # data.workers: tokenizer processes
QUANTIZE = ("none", "int8")  # inference weights: as they are, or int8 weight-only (torchao)
COMPILE = ("auto", "on", "off")  # torch.compile of the decode step (auto: on for CUDA GPUs)


@dataclass
class ModelConfig:
    """Shape of the decoder-only transformer."""

    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    vocab_multiple: int = 1  # round a tokenizer-given vocab_size up to this (64: GPT-2's 50,257 -> 50,304)
    context: int = 256  # the longest sequence the model attends over (block size)
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 0  # key/value heads: 0 = n_head (multi-head), 1 = multi-query, between = grouped-query
    d_model: int = 384  # residual stream width
    d_ff: int = 0  # hidden width of the MLP; 0 means 4 * d_model (gelu) or 8/3 * d_model (swiglu)
    mlp: str = "gelu"  # gelu | gelu_tanh (GPT-2's tanh approximation) | swiglu (hidden rounded up to a multiple of 64)
    pos: str = "learned"  # position information: learned | sinusoidal | rope | none
    rope_base: float = 10000.0  # rotary base (theta)
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "pre"  # pre (x + f(norm(x))) | post (norm(x + f(x)))
    qk_norm: bool = False  # RMSNorm on queries and keys (per head) before attention
    attention: str = "sdpa"  # sdpa (fused kernel) | manual (explicit softmax; keeps the weights for inspection)
    dropout: float = 0.0
    bias: bool = True  # biases in linear layers and LayerNorms
    tie_weights: bool = True  # output head shares the token embedding matrix
    init: str = "gpt2"  # gpt2 (normal 0.02, residual projections scaled by 1/sqrt(2 n_layer)) | xavier
    # (imported Llama-family models set these; the defaults keep every older run unchanged)
    head_size: int = 0  # per-head width of queries, keys and values; 0 = d_model // n_head
    attn_bias: bool | None = None  # biases in the attention projections (q, k, v, output); None = model.bias
    mlp_bias: bool | None = None  # biases in the MLP's linear layers; None = model.bias
    norm_eps: float = 1e-5  # epsilon of every LayerNorm / RMSNorm
    ff_multiple: int = 64  # swiglu's hidden width is rounded up to a multiple of this (1 = exactly d_ff)

    def validate(self) -> None:
        check_fields(self, "model.")
        check_range("model.vocab_size", self.vocab_size, ge=0, note=" (0 = from the tokenizer)")
        check_range("model.vocab_multiple", self.vocab_multiple, ge=1)
        for name in ("context", "n_layer", "n_head", "d_model"):
            check_range(f"model.{name}", getattr(self, name), ge=1)
        check_range("model.d_ff", self.d_ff, ge=0, note=" (0 = the default for the MLP kind)")
        check_range("model.head_size", self.head_size, ge=0, note=" (0 = d_model // n_head)")
        require(self.head_size > 0 or self.d_model % self.n_head == 0,
               f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        require(self.norm_eps > 0, "model.norm_eps must be > 0")
        require(self.ff_multiple >= 1, "model.ff_multiple must be >= 1")
        require(self.n_kv_head >= 0 and self.n_head % self.kv_heads == 0,
               f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head})")
        check_range("model.dropout", self.dropout, ge=0, lt=1)
        for name, allowed in (("mlp", MLPS), ("pos", POSITIONS), ("norm", NORMS), ("norm_position", ("pre", "post")),
                              ("attention", ("sdpa", "manual")), ("init", ("gpt2", "xavier"))):
            require(getattr(self, name) in allowed,
                   f"model.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        require(self.pos != "rope" or self.head_dim % 2 == 0, "rotary positions need an even head size")
        check_range("model.rope_base", self.rope_base, gt=1)

    def embedding_rows(self, tokenizer_vocab: int) -> int:
        """The model's vocabulary for a tokenizer of this size: vocab_size if set (at least the
        tokenizer's), else the tokenizer's rounded up to vocab_multiple."""
        if self.vocab_size == 0:
            return -(-tokenizer_vocab // self.vocab_multiple) * self.vocab_multiple
        require(self.vocab_size >= tokenizer_vocab, f"model.vocab_size {self.vocab_size} is smaller than the "
               f"tokenizer's vocabulary ({tokenizer_vocab}); set it to 0 to follow the tokenizer")
        return self.vocab_size

    def min_params(self, vocab: int) -> int:
        """A lower bound on the parameter count (the weight matrices alone), computed without
        building the model, so sizes that cannot fit are refused before anything is allocated."""
        d, heads = self.d_model, self.n_head * self.head_dim
        attention = d * (self.n_head + 2 * self.kv_heads) * self.head_dim + heads * d
        mlp = (3 if self.mlp == "swiglu" else 2) * d * self.ff_width
        return vocab * d + (self.context * d if self.pos == "learned" else 0) + self.n_layer * (attention + mlp)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    @property
    def has_attn_bias(self) -> bool:
        return self.bias if self.attn_bias is None else self.attn_bias

    @property
    def has_mlp_bias(self) -> bool:
        return self.bias if self.mlp_bias is None else self.mlp_bias

    @property
    def ff_width(self) -> int:
        if self.mlp == "swiglu":  # 8/3 d keeps the parameter count of a 4 d GELU MLP (three matrices, not two)
            return -(-(self.d_ff or 8 * self.d_model // 3) // self.ff_multiple) * self.ff_multiple
        return self.d_ff or 4 * self.d_model


@dataclass
class DataConfig:
    """Where the tokens come from, how they are split, and how training windows are drawn."""

    source: str = "shakespeare"  # a catalog dataset (`tinylm datasets`), hf:OWNER/NAME[:CONFIG][@REV], a file or folder
    dir: str = ""  # a prepared data directory; when set, `source` is not read
    tokenizer: str = "char"  # char | word[:SIZE][:lower] | gpt2 | bpe[:SIZE] | hf:PATH (a tokenizer.json or its dir)
    val_fraction: float = 0.1  # held out for validation when the source has no validation split
    split: str = "tail"  # tail (the last val_fraction of the text) | shuffle (seeded random documents)
    split_seed: int = 1337  # seed of the shuffle split
    max_tokens: int = 0  # stop after this many training tokens (0 = the whole source)
    text_field: str = "text"  # the field of .jsonl records / the Parquet column holding the text
    source_dir: str = ""  # local copy of catalog datasets' raw files ("" = $TINYLM_DATA_DIR, else download)
    workers: int = 0  # tokenizer processes for preparation (0 = one per CPU core for large sources)
    errors: str = "strict"  # invalid UTF-8 in the source: strict (stop with an error) | replace (U+FFFD)
    sampling: str = "random"  # training windows: random (seeded offsets) | permutation (each window once per epoch)
    source_splits: bool = True  # use a dataset's own validation split; false: hold val_fraction out of its train split
    hf_split: str = "train"  # hf: sources: the dataset's split to train on (its validation/test become val/test)

    def validate(self) -> None:
        check_fields(self, "data.")
        require(bool(self.source or self.dir), "set data.source (a dataset, text file or folder) or data.dir")
        require(self.errors in ENCODING_ERRORS, f"data.errors must be strict or replace, got {self.errors!r}")
        check_range("data.val_fraction", self.val_fraction, gt=0, lt=1)
        require(self.split in SPLIT_METHODS, f"data.split must be one of {', '.join(SPLIT_METHODS)}, got {self.split!r}")
        require(self.sampling in SAMPLING, f"data.sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        check_range("data.max_tokens", self.max_tokens, ge=0, note=" (0 = no limit)")
        check_range("data.workers", self.workers, ge=0, le=MAX_WORKERS, note=" (0 = automatic)")
        require(bool(self.text_field), "data.text_field must name a field")
        require(bool(self.hf_split), "data.hf_split must name a split of the Hub dataset (default train)")


@dataclass
class TrainConfig:
    """Optimisation, schedule, budget, evaluation and checkpointing."""

    out_dir: str = ""  # run directory; "" means runs/<preset>
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast precision)
    compile: bool = False
    threads: int = 0  # CPU threads per process; 0 = the machine's cores divided among the processes on it
    batch_size: int = 32  # sequences per micro-batch in each process; 0 = the largest that fits (see batch_tokens)
    grad_accum: int = 1  # micro-batches per optimizer step (derived from batch_tokens when that is set)
    batch_tokens: int = 0  # tokens per optimizer step over all processes; 0 = batch_size * grad_accum * seq_len
    seq_len: int = 0  # tokens per training and validation window; 0 = model.context (may be shorter than it)
    max_steps: int = 5000
    epochs: float = 0.0  # when > 0, max_steps = this many passes over the training tokens
    time_budget: float = 0.0  # seconds of wall clock; 0 = no limit
    optimizer: str = "adamw"  # adamw | adam | muon (Muon on the blocks' weight matrices, AdamW on the rest)
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine schedule decays to this; the WSD cool-down ends at it
    schedule: str = "cosine"  # cosine (warmup, cosine decay) | wsd (warmup, constant, linear cool-down) | constant
    cooldown: float = 0.2  # fraction of the run spent in the WSD cool-down
    warmup_steps: int = 100
    weight_decay: float = 0.1  # decoupled (adamw) or L2 (adam), on weight matrices only
    decay_all: bool = False  # also decay embeddings, norms and biases
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    muon_lr: float = 0.02  # Muon's learning rate (scaled by the same schedule as lr)
    muon_momentum: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    eval_interval: int = 250  # steps between validation passes (each also saves the checkpoint)
    eval_tokens: int = 0  # validation tokens per periodic pass; 0 = the whole split
    save_interval: int = 0  # also checkpoint every N steps (0 = only at validation passes)
    save_minutes: float = 0.0  # also checkpoint when this many minutes passed since the last one (0 = off)
    keep_last: int = 0  # keep copies of the last K checkpoints in checkpoints/step-N/ (0 = only the latest)
    hellaswag_items: int = 0  # HellaSwag items scored at each validation pass (a fixed seeded subset; 0 = off)
    hellaswag_file: str = ""  # "" = $TINYLM_DATA_DIR/hellaswag/hellaswag_val.jsonl, else downloaded once
    log_interval: int = 10  # steps between rows in metrics.jsonl
    trackers: str = ""  # also log to: tensorboard, wandb (comma-separated; extras tinylm[tensorboard|wandb])

    def validate(self) -> None:
        check_fields(self, "train.")
        require(self.device in DEVICES or self.device.startswith("cuda:"),
               f"train.device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        require(self.dtype in DTYPES, f"train.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        require(self.optimizer in OPTIMIZERS,
               f"train.optimizer {self.optimizer!r} does not exist; choose one of {', '.join(OPTIMIZERS)}")
        require(self.schedule in SCHEDULES,
               f"train.schedule {self.schedule!r} does not exist; choose one of {', '.join(SCHEDULES)}")
        for name in ("grad_accum", "max_steps", "eval_interval", "log_interval"):
            check_range(f"train.{name}", getattr(self, name), ge=1)
        for name in ("time_budget", "warmup_steps", "weight_decay", "grad_clip", "eval_tokens", "min_lr",
                     "hellaswag_items", "batch_size", "batch_tokens", "epochs", "save_interval",
                     "save_minutes", "keep_last", "seq_len"):
            check_range(f"train.{name}", getattr(self, name), ge=0)
        check_range("train.threads", self.threads, ge=0, le=MAX_THREADS, note=" (0 = automatic)")
        # Adam divides by sqrt(v) + eps: an eps that float32 flushes to 0 gives 0/0 for a zero gradient
        check_range("train.eps", self.eps, ge=FLOAT32_TINY, note=" (the smallest normal float32)")
        check_range("train.lr", self.lr, gt=0)
        require(self.min_lr <= self.lr, "train.min_lr must not exceed train.lr")
        check_range("train.beta1", self.beta1, ge=0, lt=1)
        check_range("train.beta2", self.beta2, ge=0, lt=1)
        check_range("train.cooldown", self.cooldown, gt=0, le=1, note=" (a fraction of the run)")
        check_range("train.muon_lr", self.muon_lr, gt=0)
        check_range("train.muon_momentum", self.muon_momentum, ge=0, lt=1)
        if self.optimizer != "adam":  # decoupled decay multiplies the weights by 1 - lr * weight_decay each step
            top = max(self.lr, self.muon_lr if self.optimizer == "muon" else 0.0)
            require(top * self.weight_decay < 1, f"train.weight_decay {self.weight_decay:g} times the learning rate "
                   f"{top:g} is {top * self.weight_decay:g}: each step multiplies the weights by 1 - lr * weight_decay, "
                   f"which must stay above 0; use a weight decay below {1 / top:g} (0.1 is usual)")
        require(self.batch_size > 0 or self.batch_tokens > 0,
               "train.batch_size 0 (automatic) needs train.batch_tokens, the tokens per optimizer step")
        require(self.batch_tokens == 0 or self.grad_accum == 1,
               "set train.batch_tokens or train.grad_accum, not both (batch_tokens decides the accumulation)")


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
    each target layer's output gains (alpha / r) * B A dropout(x), A (r x in) and B (out x r)
    trained, the base weights frozen. Used when finetune.method = "lora"."""

    r: int = 8  # the adapters' rank
    alpha: float = 16.0  # scale numerator: the update is multiplied by alpha / r
    dropout: float = 0.05  # dropout on the adapters' input (training only)
    targets: str = "qkv"  # comma-separated layers to adapt: qkv, proj (attention out), fc, mlp_proj, head
    train_biases: bool = False  # also train the base model's biases (saved with the adapter)
    train_norms: bool = False  # also train the base model's normalisation weights (saved with the adapter)

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def validate(self) -> None:
        check_fields(self, "lora.")
        check_range("lora.r", self.r, ge=1, note=" (the adapters' rank, --lora-r)")
        check_range("lora.alpha", self.alpha, gt=0, note=" (--lora-alpha)")
        check_range("lora.dropout", self.dropout, ge=0, lt=1, note=" (--lora-dropout)")
        require(bool(self.target_list), "lora.targets (--lora-targets) must name at least one layer: "
               + ", ".join(LORA_TARGETS))
        for target in self.target_list:
            close = difflib.get_close_matches(target, LORA_TARGETS, n=1)
            require(target in LORA_TARGETS, f"lora.targets: the model has no layer {target!r}"
                   + (f" (did you mean {close[0]!r}?)" if close else "") + f"; choose from {', '.join(LORA_TARGETS)}")


@dataclass
class FinetuneConfig:
    """Fine-tuning of a base run (`tinylm finetune`); method "" for a run trained from scratch.
    The base fields are recorded when fine-tuning starts and checked whenever the run is loaded."""

    method: str = ""  # "" (not a fine-tune) | lora (adapters on the frozen base) | full (every weight)
    base: str = ""  # the base run directory (absolute path)
    base_weights: str = ""  # the base weights file fine-tuned from (recorded)
    base_sha256: str = ""  # sha256 of that file (recorded; an adapter on changed base weights is refused)
    format: str = "auto"  # auto (from the file) | text | instruction (Alpaca) | chat (OpenAI messages) | preference
    objective: str = "sft"  # sft (next-token loss on the data) | dpo (preference pairs; the dpo.* settings)
    val_data: str = ""  # a validation file of the same format ("" = hold out data.val_fraction of the data)
    template: str = ""  # prompt template: alpaca | chat | plain ("" = chosen for the data and the tokenizer)
    train_on_prompt: bool = False  # also train on prompt tokens (default: loss on response tokens only)
    merged: bool = False  # set by `tinylm merge`: the adapter is folded into this run's own weights

    @property
    def is_adapter_run(self) -> bool:
        """Whether the run directory holds an adapter on a base run (not its own weights)."""
        return self.method == "lora" and not self.merged

    def validate(self) -> None:
        check_fields(self, "finetune.")
        require(self.method in FINETUNE_METHODS,
               f"finetune.method (--method) must be lora or full, got {self.method!r}")
        require(self.format in FINETUNE_FORMATS,
               f"finetune.format must be one of {', '.join(FINETUNE_FORMATS)}, got {self.format!r}")
        require(self.objective in FINETUNE_OBJECTIVES,
               f"finetune.objective must be sft or dpo (--method dpo), got {self.objective!r}")
        require(self.objective == "sft" or bool(self.method),
               "finetune.objective dpo is a fine-tune of a base run: give finetune.method lora or full")
        require(self.format in ("auto", "preference") if self.objective == "dpo" else self.format != "preference",
               "preference pairs train with --method dpo (finetune.objective = dpo), and DPO trains on preference "
               f"pairs ({{\"prompt\", \"chosen\", \"rejected\"}} records); got objective {self.objective} with format "
               f"{self.format}")
        require(not self.method or bool(self.base), "finetune.base must name the base run directory")


@dataclass
class DPOConfig:
    """Preference tuning on (prompt, chosen, rejected) pairs, used when finetune.objective = "dpo".
    With h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)), each log-probability
    the sum over the response's tokens and the reference the base run: sigmoid (DPO, Rafailov et al. 2023,
    eq. 7; with label_smoothing the conservative DPO of Mitchell 2023, as TRL) is
    -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h); ipo (Azar et al. 2023, eq. 17, with TRL's
    per-token averaging of each log-ratio) is (h_avg - 1 / (2 beta))^2."""

    beta: float = 0.1  # the strength of the pull towards the reference (KL coefficient); rewards are beta x log-ratios
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    label_smoothing: float = 0.0  # sigmoid only: the assumed chance that a pair's preference label is flipped

    def validate(self) -> None:
        check_fields(self, "dpo.")
        check_range("dpo.beta", self.beta, gt=0, note=" (--beta)")
        require(self.loss in DPO_LOSSES, f"dpo.loss (--loss) must be sigmoid or ipo, got {self.loss!r}")
        check_range("dpo.label_smoothing", self.label_smoothing, ge=0, lt=0.5, note=" (--label-smoothing)")
        require(self.loss == "sigmoid" or self.label_smoothing == 0,
               "dpo.label_smoothing applies to the sigmoid loss only; drop --label-smoothing with --loss ipo")


@dataclass
class RunConfig:
    """Everything needed to reproduce a training run; saved as config.json in the run dir."""

    preset: str = ""
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)

    def validate(self) -> RunConfig:
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.finetune.validate()
        self.lora.validate()
        self.dpo.validate()
        require(not (self.finetune.objective == "dpo" and self.finetune.method == "lora"
                     and (self.lora.train_biases or self.lora.train_norms)),
               "DPO with LoRA uses the base (adapters disabled) as its reference model, so the adapter cannot also "
               "train base biases or norms; drop --lora-train-biases / --lora-train-norms, or use --full")
        require(self.train.seq_len <= self.model.context,
               f"train.seq_len ({self.train.seq_len}) must not exceed model.context ({self.model.context})")
        return self

    @property
    def seq_len(self) -> int:
        """Tokens per training window: train.seq_len, or the model's whole context."""
        return self.train.seq_len or self.model.context

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "config") -> RunConfig:
        return update(cls(), d, origin)


# The fields of a RunConfig that hold paths. They are recorded absolute (`absolute_paths`), so a run's
# config.json names the same files for every command that reads it, from any working directory.
PATH_FIELDS = ("data.dir", "data.source_dir", "train.out_dir", "train.hellaswag_file", "finetune.base")
# fields holding a file or folder, or a name (a dataset, hf:OWNER/NAME): absolute when they name a path
SOURCE_FIELDS = ("data.source", "finetune.val_data")
HF_TOKENIZER = "hf:"  # data.tokenizer "hf:PATH": a Hugging Face tokenizer file or directory


def absolute_paths(cfg: RunConfig, base: str | os.PathLike | None = None) -> RunConfig:
    """Make every path `cfg` holds absolute, in place: relative ones are taken from `base` (default the
    working directory). A source (data.source, finetune.val_data) is a path only when it names an
    existing file or folder, as `read_source` decides; dataset names and hf: specs stay as they are."""
    base = os.fspath(base) if base is not None else os.getcwd()

    def exists(value: str) -> bool:
        return os.path.exists(os.path.join(base, os.path.expanduser(value)))

    for key in (*PATH_FIELDS, *SOURCE_FIELDS):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and (key in PATH_FIELDS or (not value.startswith("hf:") and exists(value))):
            setattr(getattr(cfg, section), name, fileio.absolute(value, base))
    cfg.data.tokenizer = absolute_tokenizer_spec(cfg.data.tokenizer, base)
    return cfg


def absolute_tokenizer_spec(spec: str, base: str | os.PathLike | None = None) -> str:
    """A tokenizer spec with the path of `hf:PATH` made absolute (from `base`, default the working
    directory) when it exists; other specs unchanged."""
    if not spec.startswith(HF_TOKENIZER):
        return spec
    path = spec[len(HF_TOKENIZER):]
    full = fileio.absolute(path, base)
    return HF_TOKENIZER + full if path and os.path.exists(full) else spec
