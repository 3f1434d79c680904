"""The `tinylm` command line: one argparse parser, a subparser per verb (`add_<verb>`).

Every flag is a config field: its argparse `dest` is the field's dotted name (for example
`--time-budget` is `train.time_budget`), and values are converted and checked by the same
code as `--set section.key=value` and TOML presets (cli/commands.py `_apply`).
"""

from __future__ import annotations

import argparse

from tinylm.version import __version__
from tinylm.cli import commands
from tinylm.config import COMPILE, QUANTIZE, RunConfig, preset_names, valid_keys

EPILOG = "Docs: README.md. Every flag maps to a config field; see `tinylm train --help` for --set keys."


class _MethodAction(argparse.Action):
    """--method lora | full sets finetune.method; --method dpo sets finetune.objective (the weights stay LoRA
    unless --full or --method full says otherwise)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, "finetune.objective" if values == "dpo" else self.dest, values)


def _runtime_flags(p: argparse.ArgumentParser, section: str, checkpoint: bool = False) -> None:
    """--device and --dtype (and --checkpoint for verbs that load a run) for one config section."""
    p.add_argument("--device", dest=f"{section}.device", metavar="DEV", help="auto (default), cpu, cuda, cuda:N or mps")
    what = ("the weights' precision; auto = bfloat16 on GPUs and CPUs with native bfloat16" if checkpoint
            else "autocast precision")
    p.add_argument("--dtype", dest=f"{section}.dtype", metavar="T",
                   help=f"auto (default), float32, bfloat16 or float16 ({what})")
    if checkpoint:
        p.add_argument("--checkpoint", dest=f"{section}.checkpoint", metavar="W",
                       help="which weights: best (default), latest, or a .safetensors path")


def _inference_flags(p: argparse.ArgumentParser, section: str, compile: bool = True) -> None:
    """--quantize (and --compile) for verbs that run a trained model (docs/generation.md: Speed and precision)."""
    p.add_argument("--quantize", dest=f"{section}.quantize", metavar="Q", choices=QUANTIZE,
                   help="none (default) or int8: int8 weight-only quantization (torchao), computed in bfloat16")
    if compile:
        p.add_argument("--compile", dest=f"{section}.compile", metavar="WHEN", choices=COMPILE,
                       help="torch.compile the decode step: auto (default: on CUDA GPUs), on or off; "
                            "the first generation compiles it (a one-time warm-up)")


def _flags(p: argparse.ArgumentParser, section: str, rows: list[tuple[str, str, str | bool, str]]) -> None:
    """One flag per row (flag, field, value, help), its dest the config field `section.field`: value a
    METAVAR, METAVAR* (repeatable: action append), or True / False (the flag sets the field to it)."""
    for flag, name, value, text in rows:
        if isinstance(value, bool):
            p.add_argument(flag, dest=f"{section}.{name}", action="store_const", const=str(value).lower(), help=text)
        elif value.endswith("*"):
            p.add_argument(flag, dest=f"{section}.{name}", metavar=value[:-1], action="append", help=text)
        else:
            p.add_argument(flag, dest=f"{section}.{name}", metavar=value, help=text)


SAMPLE_FLAGS = [  # tinylm sample (SampleConfig): (flag, field, METAVAR | METAVAR* (repeatable) | True / False, help)
    ("--prompt", "prompt", "TEXT", "text to continue (default: none)"),
    ("--max-new-tokens", "max_new_tokens", "N", "default 500"),
    ("--temperature", "temperature", "T", "default 0.8; <= 0 is greedy"),
    ("--top-k", "top_k", "K", "sample among the K likeliest (0 = all)"),
    ("--seed", "seed", "N", "seed for reproducible samples"),
    ("--num-samples", "num_samples", "N", "how many samples (default 1)"),
    ("--top-p", "top_p", "P",
     "nucleus sampling: the smallest set of tokens whose probability reaches P (default 1 = off)"),
    ("--min-p", "min_p", "P", "drop tokens less likely than P x the likeliest one's probability (default 0 = off)"),
    ("--repetition-penalty", "repetition_penalty", "R",
     "make tokens already in the prompt or output less likely (CTRL; > 1 penalises; default 1)"),
    ("--beams", "beams", "N", "beam search with N beams (deterministic; default 1 = sampling)"),
    ("--length-penalty", "length_penalty", "A", "beam score = sum of log-probabilities / length^A (default 1)"),
    ("--num-return-sequences", "num_return_sequences", "N", "print the N best beams (N <= --beams)"),
    ("--stop", "stop", "TEXT*", "stop before this text (repeatable); end-of-text tokens always stop"),
    ("--no-cache", "use_cache", False, "no KV cache: run the model over the last `context` tokens for every new token"),
    ("--stream", "stream", True, "print the text as it is generated (default: all at once at the end)"),
    ("--verbose", "verbose", True,
     "also print the prompt's token ids and tokens and the generated ids (text at the end)"),
    ("--chat", "chat", True,
     "chat in the run's template: a loop in a terminal (one reply per line read otherwise), one turn with "
     "--prompt"),
    ("--system", "system", "TEXT", "the chat's system message"),
    ("--template", "template", "NAME", "--chat with a run that has no template of its own: alpaca, chat or plain"),
]

SERVE_FLAGS = [  # tinylm serve (ServeConfig): (flag, field, METAVAR | METAVAR* (repeatable) | True / False, help)
    ("--host", "host", "ADDR", "address to listen on (default 127.0.0.1; others warn without an API key)"),
    ("--port", "port", "N", "port (default 8000; 0 = any free port)"),
    ("--model-name", "model_name", "NAME", "the model id clients use (default: the run directory's name)"),
    ("--api-key", "api_key", "KEY", "require \"Authorization: Bearer KEY\" (default $TINYLM_API_KEY, else none)"),
    ("--max-batch", "max_batch", "N", "sequences decoding together (16)"),
    ("--max-queue", "max_queue", "N", "sequences waiting for a slot before requests get 503 (256)"),
    ("--max-tokens", "max_tokens", "N", "the most new tokens one request may ask for (1024)"),
    ("--max-body", "max_body", "BYTES", "largest request body (1 MiB)"),
    ("--chat-template", "chat_template", "NAME",
     "chat template for runs without their own: alpaca, chat or plain (default: none, chat requests get a "
     "400 saying how to get one)"),
    ("--adapter", "adapter", "NAME=ADAPTER_RUN*",
     "also serve a LoRA fine-tuned run of this base as model NAME (repeatable)"),
    ("--allowed-host", "allowed_hosts", "NAME*",
     "also answer requests whose Host is NAME (.NAME: it and its subdomains; *: any); loopback names, IP "
     "addresses the server listens on and --host are answered anyway (repeatable)"),
    ("--cors-origin", "cors_origins", "ORIGIN*",
     "let web pages of ORIGIN (e.g. https://example.com; *: any) call the API (CORS; repeatable)"),
    ("--header-timeout", "header_timeout", "S", "close connections whose request headers take longer (10 s)"),
    ("--body-timeout", "body_timeout", "S", "answer 408 to requests whose body takes longer (30 s)"),
    ("--write-timeout", "write_timeout", "S",
     "close connections of clients that take none of their response for this long (30 s)"),
    ("--shutdown-timeout", "shutdown_timeout", "S",
     "on Ctrl-C or SIGTERM, let running requests go on this long, then end them (5 s)"),
]


def _errors_flag(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument("--errors", dest=f"{section}.errors", metavar="MODE", choices=("strict", "replace"),
                   help="invalid UTF-8 in the text: strict (default: stop with an error) or replace (U+FFFD)")


def _training_flags(p: argparse.ArgumentParser) -> None:
    """The flags `tinylm train` and `tinylm finetune` share."""
    p.add_argument("--time-budget", dest="train.time_budget", metavar="S", help="wall-clock budget in seconds")
    p.add_argument("--max-steps", dest="train.max_steps", metavar="N", help="optimizer steps at most")
    _runtime_flags(p, "train")
    p.add_argument("--seed", dest="train.seed", metavar="N", help="random seed")
    p.add_argument("--compile", dest="train.compile", action="store_const", const="true",
                   help="use torch.compile (falls back with a warning where it does not work)")
    p.add_argument("--optimizer", dest="train.optimizer", metavar="NAME", help="adamw (default), adam or muon")
    p.add_argument("--lr", dest="train.lr", metavar="LR", help="peak learning rate")
    p.add_argument("--schedule", dest="train.schedule", metavar="S", help="cosine (default), wsd or constant")
    p.add_argument("--batch-size", dest="train.batch_size", metavar="N",
                   help="sequences (fine-tuning: examples) per micro-batch and process (0: the largest that fits)")
    p.add_argument("--batch-tokens", dest="train.batch_tokens", metavar="N",
                   help="tokens per optimizer step over all processes (sets the gradient accumulation)")
    p.add_argument("--trackers", dest="train.trackers", metavar="LIST", help="also log to tensorboard and/or wandb")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set model.n_layer=4 (repeatable)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")

    parser = argparse.ArgumentParser(
        prog="tinylm", parents=[common], epilog=EPILOG,
        description="Build, train, evaluate and sample from small GPT-style language models.")
    parser.add_argument("--version", action="version", version=f"tinylm {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("prepare", parents=[common], help="tokenize a dataset or your text into a data directory",
                         description="Tokenize SOURCE once into memory-mapped <split>.bin files + meta.json.")
    p.add_argument("data.source", metavar="SOURCE",
                   help="a dataset name (see `tinylm datasets`), hf:OWNER/NAME[:CONFIG][@REVISION] (any Hugging Face "
                        "dataset, streamed), a .txt/.jsonl/.parquet file, or a folder of them")
    p.add_argument("--out", dest="data.dir", metavar="DATA_DIR",
                   help="output data directory (default: a directory in the cache, reused by `tinylm train`)")
    p.add_argument("--tokenizer", dest="data.tokenizer", metavar="KIND",
                   help="tokenizer to build: char (default), word[:SIZE][:lower], gpt2, bpe[:SIZE], "
                        "hf:DIR_OR_tokenizer.json (any Hugging Face tokenizer)")
    p.add_argument("--tokenizer-from", metavar="DIR", help="reuse the tokenizer of a run or data directory")
    p.add_argument("--val-fraction", dest="data.val_fraction", metavar="F",
                   help="fraction held out for validation when the source has no validation split (default 0.1)")
    p.add_argument("--split", dest="data.split", metavar="HOW", choices=("tail", "shuffle"),
                   help="tail (default: the end of the text) or shuffle (seeded random documents)")
    p.add_argument("--split-seed", dest="data.split_seed", metavar="N", help="seed of --split shuffle")
    p.add_argument("--ignore-source-splits", dest="data.source_splits", action="store_const", const="false",
                   help="hold --val-fraction out of a dataset's train split instead of using its own validation split")
    p.add_argument("--max-tokens", dest="data.max_tokens", metavar="N", help="stop after N training tokens")
    p.add_argument("--text-field", dest="data.text_field", metavar="NAME",
                   help="the JSONL field / Parquet column / Hub dataset field holding the text (default text)")
    p.add_argument("--hf-split", dest="data.hf_split", metavar="SPLIT",
                   help="hf: sources: the dataset's split to train on (default train; its validation and test "
                        "splits become val and test)")
    p.add_argument("--source-dir", dest="data.source_dir", metavar="DIR",
                   help="a local copy of datasets' raw files, as DIR/NAME/... (default $TINYLM_DATA_DIR)")
    p.add_argument("--workers", dest="data.workers", metavar="N",
                   help="tokenizer processes (default: one per core for sources over 16 MB)")
    _errors_flag(p, "data")
    p.set_defaults(func=commands.cmd_prepare)

    p = verbs.add_parser("datasets", parents=[common], help="list the datasets `tinylm prepare` knows by name")
    p.add_argument("name", nargs="?", metavar="NAME", help="show one dataset's files, URLs and layout")
    p.set_defaults(func=commands.cmd_datasets)

    keys = ", ".join(_all_keys())
    p = verbs.add_parser(
        "train", parents=[common], help="train a model (default: the shakespeare-char preset)",
        description="Train a model. With no arguments: the shakespeare-char preset on the bundled corpus.",
        epilog=f"--set keys: {keys}")
    p.add_argument("--preset", metavar="NAME", help=f"a shipped preset ({', '.join(preset_names())})")
    p.add_argument("--config", metavar="FILE.toml", help="a TOML file with [model], [data], [train] tables")
    p.add_argument("--data", dest="data.dir", metavar="DATA_DIR", help="a prepared data directory")
    p.add_argument("--text", dest="data.source", metavar="SOURCE",
                   help="a dataset name, hf:OWNER/NAME[:CONFIG], text/jsonl/parquet file or folder "
                        "(prepared on the fly, cached)")
    p.add_argument("--tokenizer", dest="data.tokenizer", metavar="KIND",
                   help="tokenizer for --text: char, word[:SIZE][:lower], gpt2, bpe[:SIZE], hf:PATH")
    _errors_flag(p, "data")
    p.add_argument("--out", dest="train.out_dir", metavar="RUN_DIR", help="run directory (default runs/PRESET)")
    _training_flags(p)
    p.set_defaults(func=commands.cmd_train)

    p = verbs.add_parser(
        "finetune", parents=[common], help="fine-tune a run (LoRA or full) on text, instructions, chats or preference pairs",
        description="Fine-tune BASE_RUN (trained or imported) on SOURCE: plain text (continued pre-training), "
                    "instruction records (Alpaca JSON/JSONL), chat records (JSONL with \"messages\") or, with --method "
                    "dpo, preference pairs (JSONL with \"prompt\", \"chosen\", \"rejected\"). LoRA "
                    "writes a small adapter run; --method full a standalone run. Guide: docs/finetuning.md.",
        epilog=f"--set keys: {keys}")
    p.add_argument("base_run", nargs="?", metavar="BASE_RUN", help="the run to fine-tune [finetune.base]")
    p.add_argument("--data", dest="data.source", metavar="SOURCE",
                   help="a .json/.jsonl file of instruction or chat records, or text: a .txt/.jsonl/.parquet file, "
                        "folder, dataset name or prepared data directory")
    p.add_argument("--val-data", dest="finetune.val_data", metavar="FILE",
                   help="validation data in the same format (default: hold out --val-fraction of SOURCE)")
    p.add_argument("--val-fraction", dest="data.val_fraction", metavar="F", help="held out for validation (0.1)")
    _errors_flag(p, "data")
    p.add_argument("--out", dest="train.out_dir", metavar="RUN_DIR", help="the fine-tuned run's directory")
    p.add_argument("--method", dest="finetune.method", metavar="M", choices=("lora", "full", "dpo"),
                   action=_MethodAction,
                   help="lora (default: adapters on the frozen base) or full (every weight) [finetune.method]; "
                        "dpo: preference tuning on pairs, with LoRA unless --full [finetune.objective]")
    p.add_argument("--full", dest="finetune.method", action="store_const", const="full",
                   help="train every weight (the same as --method full; with --method dpo: full-weight DPO)")
    p.add_argument("--objective", dest="finetune.objective", metavar="O", choices=("sft", "dpo"),
                   help="sft (default: next-token loss on the responses or text) or dpo (preference pairs)")
    p.add_argument("--beta", dest="dpo.beta", metavar="B",
                   help="DPO: the pull towards the base (KL coefficient; rewards are beta x log-ratios) (0.1)")
    p.add_argument("--loss", dest="dpo.loss", metavar="L", choices=("sigmoid", "ipo"),
                   help="DPO: sigmoid (default: DPO, Rafailov et al. 2023) or ipo (Azar et al. 2023)")
    p.add_argument("--label-smoothing", dest="dpo.label_smoothing", metavar="E",
                   help="DPO sigmoid loss: the assumed chance a pair's preference is flipped (conservative DPO; 0)")
    p.add_argument("--lora-r", dest="lora.r", metavar="R", help="the adapters' rank (8)")
    p.add_argument("--lora-alpha", dest="lora.alpha", metavar="A", help="the update is scaled by alpha / r (16)")
    p.add_argument("--lora-dropout", dest="lora.dropout", metavar="P", help="dropout on the adapters' input (0.05)")
    p.add_argument("--lora-targets", dest="lora.targets", metavar="LIST",
                   help="layers to adapt, comma-separated: qkv (default), proj, fc, mlp_proj, head")
    p.add_argument("--lora-train-biases", dest="lora.train_biases", action="store_const", const="true",
                   help="also train the base's biases (saved with the adapter)")
    p.add_argument("--lora-train-norms", dest="lora.train_norms", action="store_const", const="true",
                   help="also train the base's normalisation weights (saved with the adapter)")
    p.add_argument("--template", dest="finetune.template", metavar="NAME",
                   help="prompt template: alpaca, chat or plain (default: alpaca for instructions, chat for chats; "
                        "plain where the vocabulary lacks their markers)")
    p.add_argument("--format", dest="finetune.format", metavar="F", choices=("auto", "text", "instruction", "chat"),
                   help="the data's format (default auto: from the file)")
    p.add_argument("--train-on-prompt", dest="finetune.train_on_prompt", action="store_const", const="true",
                   help="also train on the prompt's tokens (default: loss on the responses only)")
    p.add_argument("--text-field", dest="data.text_field", metavar="NAME", help="JSONL text field of plain text")
    p.add_argument("--preset", metavar="NAME", help="a preset's [train], [finetune], [lora] settings")
    p.add_argument("--config", metavar="FILE.toml", help="a TOML file with [train], [finetune], [lora], [data] tables")
    p.add_argument("--epochs", dest="train.epochs", metavar="N", help="passes over the data (default 3)")
    _training_flags(p)
    p.set_defaults(func=commands.cmd_finetune)

    p = verbs.add_parser("sample", parents=[common], help="generate text from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _flags(p, "sample", SAMPLE_FLAGS)
    _runtime_flags(p, "sample", checkpoint=True)
    _inference_flags(p, "sample")
    p.set_defaults(func=commands.cmd_sample)

    p = verbs.add_parser("eval", parents=[common], help="loss, perplexity, bits per byte and benchmarks of a run",
                         description="Score a run on a prepared data split, a catalog dataset's split, "
                                     "a text file, or (with none of them) the run's own validation data; or on "
                                     "standard benchmarks by name (--tasks), as lm-evaluation-harness scores them.")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    p.add_argument("--data", dest="eval.data", metavar="DATA_DIR", help="a prepared data directory")
    p.add_argument("--text", dest="eval.text", metavar="FILE", help="a text file (or folder), scored whole")
    p.add_argument("--dataset", dest="eval.dataset", metavar="NAME",
                   help="a catalog dataset (`tinylm datasets`) or hf:OWNER/NAME[:CONFIG], prepared once with the "
                        "run's tokenizer")
    p.add_argument("--source-dir", dest="eval.source_dir", metavar="DIR",
                   help="local copy of --dataset's raw files (default $TINYLM_DATA_DIR, else downloaded)")
    p.add_argument("--split", dest="eval.split", metavar="NAME", help="split of --data or --dataset (default val)")
    p.add_argument("--stride", dest="eval.stride", metavar="N",
                   help="tokens between scoring windows: 0 (default) = the training window, non-overlapping; "
                        "smaller gives each token more history at context/N times the compute")
    _errors_flag(p, "eval")
    p.add_argument("--batch-size", dest="eval.batch_size", metavar="N")
    _runtime_flags(p, "eval", checkpoint=True)
    _inference_flags(p, "eval", compile=False)
    p.add_argument("--hellaswag", dest="eval.hellaswag", metavar="FILE", nargs="?", const="default",
                   help="HellaSwag accuracy on FILE (default: $TINYLM_DATA_DIR/hellaswag/, else downloaded once)")
    p.add_argument("--choices", dest="eval.choices", metavar="FILE",
                   help='multiple-choice accuracy on a jsonl of {"context", "choices", "label"}')
    p.add_argument("--cloze", dest="eval.cloze", metavar="FILE",
                   help='last-word (LAMBADA-style) accuracy on a jsonl of {"context", "continuation"}')
    p.add_argument("--tasks", dest="eval.tasks", metavar="NAMES",
                   help="benchmarks by name, comma-separated (hellaswag,arc_easy,arc_challenge,piqa,winogrande,"
                        "lambada_openai,openbookqa,sciq,wikitext, or all), defined and scored as "
                        "lm-evaluation-harness 0.4.13 does; `--tasks list` describes them")
    p.add_argument("--num-fewshot", dest="eval.num_fewshot", metavar="K",
                   help="--tasks: K few-shot examples per prompt (default 0), drawn as the harness draws them")
    p.add_argument("--fewshot-seed", dest="eval.fewshot_seed", metavar="N",
                   help="--tasks: seed of the few-shot draws (default 1234, the harness's)")
    p.add_argument("--task-data", dest="eval.task_data", metavar="DIR",
                   help="--tasks: read DIR/<task>/<split>.jsonl (or .parquet) instead of the Hugging Face Hub")
    p.add_argument("--download-to", dest="eval.download_to", metavar="DIR",
                   help="--tasks: download the tasks' splits from the Hub into DIR/<task>/<split>.jsonl "
                        "(RUN_DIR optional), for --task-data DIR on a machine without network")
    p.add_argument("--limit", dest="eval.limit", metavar="N",
                   help="--tasks: the first N items of each task; --hellaswag/--choices/--cloze: a seeded "
                        "random subset of N items (default 0: all items)")
    p.add_argument("--seed", dest="eval.seed", metavar="N", help="seed of the --limit subset (default 0)")
    p.add_argument("--pairs", dest="eval.pairs", metavar="FILE",
                   help='preference accuracy and margin on a jsonl of {"prompt", "chosen", "rejected"} pairs, '
                        "against the run's base (a DPO run's default: its validation pairs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=commands.cmd_eval)

    p = verbs.add_parser("export", parents=[common], help="write a run as a Hugging Face model or a GGUF file",
                         description="Export a run as a transformers directory (GPT-2, or Llama where GPT-2 "
                                     "cannot express the model) that AutoModelForCausalLM.from_pretrained loads, "
                                     "or as a GGUF file for llama.cpp and Ollama (NAME.Modelfile beside it).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", choices=("hf", "gguf", "peft"), default="hf",
                   help="hf (default): Hugging Face transformers (a LoRA run merged into its base); gguf: llama.cpp "
                        "/ Ollama; peft: a LoRA run's adapter as a PEFT adapter directory, for the base exported "
                        "with --format hf")
    p.add_argument("--out", required=True, metavar="PATH", help="output directory (hf, peft) or .gguf file (gguf)")
    p.add_argument("--dtype", choices=("f32", "f16", "q8_0"), help="gguf: weight precision (default f32)")
    p.add_argument("--chat-template", metavar="NAME",
                   help="gguf: embed this prompt template (alpaca, chat, plain; default: the run's own)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which weights: best (default) or latest")
    p.add_argument("--base-model", metavar="NAME",
                   help="peft: base_model_name_or_path to record (default: the base run's directory)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at --out (an existing GGUF file or a non-empty folder is "
                        "refused otherwise; a run directory always)")
    p.set_defaults(func=commands.cmd_export)

    p = verbs.add_parser("merge", parents=[common], help="fold a LoRA run's adapter into its base: a standalone run",
                         description="Write RUN_DIR's base weights with its LoRA adapter folded in (W + alpha/r BA) "
                                     "as a standalone run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="MERGED_RUN", help="run directory to write")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which adapter: best (default) or latest")
    p.set_defaults(func=commands.cmd_merge)

    p = verbs.add_parser("import", parents=[common], help="turn a Hugging Face GPT-2 or Llama directory into a run",
                         description="Convert a transformers directory (GPT2LMHeadModel, LlamaForCausalLM: "
                                     "config.json + model.safetensors, its shards, or pytorch_model.bin; "
                                     "tokenizer.json) into a tinylm run directory.")
    p.add_argument("src_dir", metavar="DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "auto"), default="float32",
                   help="how the weights are stored: float32 (default), bfloat16, float16 or auto (the checkpoint's)")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="cap a rotary model's context to N positions (its KV cache size; default: "
                        "max_position_embeddings)")
    p.set_defaults(func=commands.cmd_import)

    p = verbs.add_parser("serve", parents=[common], help="serve a run over an OpenAI-compatible HTTP API",
                         description="Serve RUN_DIR with an OpenAI-compatible API (/v1/completions, "
                                     "/v1/chat/completions, /v1/models), continuous batching, streaming, and a "
                                     "playground page at /. Docs: docs/serving.md.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _flags(p, "serve", SERVE_FLAGS)
    _runtime_flags(p, "serve", checkpoint=True)
    _inference_flags(p, "serve")
    p.set_defaults(func=commands.cmd_serve)

    p = verbs.add_parser("presets", parents=[common], help="list the shipped presets and their published results")
    p.add_argument("name", nargs="?", metavar="NAME", help="show one preset with every value it sets")
    p.add_argument("--markdown", action="store_true", help="print the table of presets in Markdown (as in the README)")
    p.set_defaults(func=commands.cmd_presets)
    return parser


def _all_keys() -> list[str]:
    return [k for k in valid_keys(RunConfig()) if k not in ("preset", "description")]
