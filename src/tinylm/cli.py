"""The `tinylm` command: parses arguments and calls the library; nothing else lives here.

Every flag is a config field: its argparse `dest` is the field's dotted name (for example
`--time-budget` is `train.time_budget`), and values are converted and checked by the same
code as `--set section.key=value` and TOML presets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from rich.markup import escape

from tinylm import __version__, fileio
from tinylm.config import (
    COMPILE,
    DEFAULT_PRESET,
    QUANTIZE,
    EvalConfig,
    RunConfig,
    SampleConfig,
    ServeConfig,
    apply_overrides,
    load_preset,
    preset_names,
    read_preset,
    read_toml,
    set_key,
    update,
    valid_keys,
)
from tinylm.console import TinylmWarning, console, warn
from tinylm.errors import ConfigError, TinylmError

EPILOG = "Docs: README.md. Every flag maps to a config field; see `tinylm train --help` for --set keys."


def _fields(args: argparse.Namespace) -> dict[str, str]:
    """The flags the user gave whose dest is a dotted config key."""
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


def _apply(cfg, args: argparse.Namespace, prefix: str = "", lists: tuple[str, ...] = ()) -> None:
    """Set the flags given on `cfg`; `lists` name repeatable flags (lists of strings, set as they are)."""
    given = {name: vars(args).pop(prefix + name, None) or [] for name in lists}
    for key, value in _fields(args).items():
        set_key(cfg, key.removeprefix(prefix), value if isinstance(value, str) else str(value),
                f"--{key.split('.')[-1].replace('_', '-')}", parse=True)
    for name, values in given.items():
        setattr(cfg, name, list(values))


# --------------------------------------------------------------------------- verbs


def cmd_prepare(args: argparse.Namespace) -> int:
    from tinylm.data.prepare import open_source, prepare_config, prepared_dir_for, read_meta
    from tinylm.errors import DataError
    from tinylm.tokenizers import load_tokenizer

    cfg = RunConfig().data
    _apply(cfg, args, prefix="data.")
    cfg.validate()
    if args.tokenizer_from and not cfg.dir:
        raise ConfigError("--tokenizer-from needs --out DATA_DIR")
    tokenizer = load_tokenizer(args.tokenizer_from) if args.tokenizer_from else cfg.tokenizer
    src = open_source(cfg)
    out = cfg.dir or prepared_dir_for(src, cfg)
    if not cfg.dir:
        try:
            read_meta(out)
            console.print(f"{src.name} is already prepared with {cfg.tokenizer} in {out}")
            out = None
        except DataError:
            pass
    out = prepare_config(src, tokenizer, out, cfg) if out else prepared_dir_for(src, cfg)
    meta = read_meta(out)
    splits = ", ".join(f"{k} {v['tokens']:,} tokens" for k, v in meta["splits"].items())
    console.print(f"prepared {src.name}: {splits}; {meta['tokenizer']['kind']} tokenizer with "
                  f"{meta['tokenizer']['vocab_size']:,} ids, {meta['dtype']} -> {out}\n"
                  f"  train on it with:  tinylm train --data {out}")
    print(out)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from tinylm.data.catalog import describe, details

    if args.name:
        print(details(args.name))
        return 0
    rows = describe()
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in ("name", "size", "licence", "splits")}
    print("  ".join(k.ljust(widths[k]) for k in widths) + "  source")
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in widths) + f"  {r['source']}")
    print("\nPrepare one with `tinylm prepare NAME --tokenizer gpt2`; with no internet, point --source-dir "
          "(or TINYLM_DATA_DIR) at a folder holding NAME/<raw files>.\nAny Hugging Face dataset: "
          "`tinylm prepare hf:OWNER/NAME[:CONFIG]` (streamed; docs/datasets.md).")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tinylm.run import read_config
    from tinylm.training import train

    if args.resume:
        clash = [flag for flag, given in (("--preset", args.preset), ("--config", args.config),
                                          ("--data", args.__dict__["data.dir"]),
                                          ("--text", args.__dict__["data.source"]),
                                          ("--tokenizer", args.__dict__["data.tokenizer"]),
                                          ("--errors", args.__dict__["data.errors"]),
                                          ("--out", args.__dict__["train.out_dir"])) if given]
        if clash:
            raise ConfigError(f"{', '.join(clash)} cannot be combined with --resume: a resumed run keeps "
                              "its data, model and directory")
        cfg = read_config(args.resume)
        cfg.train.out_dir = args.resume
        for item in args.set:
            if not item.startswith("train."):
                raise ConfigError(f"--set {item}: only train.* settings can change when resuming")
    else:
        cfg = load_preset(args.preset or DEFAULT_PRESET)
        if args.config:
            update(cfg, read_toml(args.config), origin=args.config)
        if args.__dict__["data.dir"] and args.__dict__["data.source"]:
            raise ConfigError("give --data DATA_DIR or --text FILE, not both")
        if args.__dict__["data.source"]:
            cfg.data.dir = ""
        if args.__dict__["data.dir"]:
            cfg.data.source = ""  # so config.json names the data the run really used
    apply_overrides(cfg, args.set)
    _apply(cfg, args)
    result = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    return _report_training(result, "train")


def _report_training(result, verb: str) -> int:
    """The end-of-training lines of `tinylm train` and `tinylm finetune`; the exit status."""
    from tinylm.training.distributed import from_environment

    if not from_environment().main:  # under torchrun only rank 0 reports
        return 0
    if result.stopped_by == "interrupt":
        console.print(f"[yellow]interrupted at step {result.step}; checkpoint saved. "
                      f"Continue with: tinylm {verb} --resume {result.run_dir}")
        return 130
    best = f", best {result.best_val_loss:.4f}" if result.best_val_loss is not None else ""
    val = f"; val loss {result.val_loss:.4f}{best}" if result.val_loss is not None else ""
    console.print(f"[green]done[/]: {result.step} steps, {result.tokens:,} tokens in {result.elapsed:.0f}s "
                  f"(stopped by {result.stopped_by.replace('_', ' ')}){val}\n"
                  f"  run directory {result.run_dir} (loss.png, perplexity.png, metrics.jsonl)\n"
                  f"  sample with:  tinylm sample {result.run_dir}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from tinylm.run import read_config
    from tinylm.training import train
    from tinylm.training.distributed import from_environment
    from tinylm.training.finetune import apply_finetune_table, finetune_config

    if args.resume:
        clash = [flag for flag, given in (("BASE_RUN", args.base_run), ("--data", args.__dict__["data.source"]),
                                          ("--out", args.__dict__["train.out_dir"]), ("--preset", args.preset),
                                          ("--config", args.config), ("--method", args.__dict__["finetune.method"]))
                 if given]
        if clash:
            raise ConfigError(f"{', '.join(clash)} cannot be combined with --resume: a resumed fine-tune keeps its "
                              "base, data and directory")
        fixed = sorted(dest for dest, value in vars(args).items()
                       if "." in dest and value is not None and not dest.startswith("train."))
        if fixed:
            raise ConfigError(f"{fixed[0]} cannot change when resuming: a resumed fine-tune keeps its LoRA, data and "
                              "template settings (only train.* ones, such as --lr and --max-steps, may change)")
        cfg = read_config(args.resume)
        if not cfg.finetune.method:
            raise ConfigError(f"{args.resume} is not a fine-tune; continue it with `tinylm train --resume`")
        if cfg.finetune.merged:
            raise ConfigError(f"{args.resume} is a merged run (standalone weights, no training state); fine-tune it "
                              f"further as a base: tinylm finetune {args.resume} --data SOURCE --out NEW_RUN")
        cfg.train.out_dir = args.resume
        for item in args.set:
            if not item.startswith("train."):
                raise ConfigError(f"--set {item}: only train.* settings can change when resuming")
    else:
        if not args.base_run or not args.__dict__["data.source"] or not args.__dict__["train.out_dir"]:
            raise ConfigError("give the base run, the data and the output: tinylm finetune BASE_RUN --data SOURCE "
                              "--out RUN_DIR")
        cfg = finetune_config(args.base_run, method=args.__dict__["finetune.method"] or "lora")
        if args.preset:
            apply_finetune_table(cfg, read_preset(args.preset), f"preset {args.preset}")
        if args.config:
            apply_finetune_table(cfg, read_toml(args.config), args.config)
    model_keys = [item for item in args.set if item.startswith("model.") and not item.startswith("model.dropout=")]
    if model_keys:
        raise ConfigError(f"--set {model_keys[0]}: a fine-tune keeps its base run's model (only model.dropout may "
                          "change)")
    apply_overrides(cfg, args.set)
    _apply(cfg, args)
    source = cfg.data.source
    if source and (os.path.isdir(source) and os.path.isfile(os.path.join(source, "meta.json"))):
        cfg.data.dir, cfg.data.source = source, ""  # a prepared data directory
    steps_given = args.__dict__["train.max_steps"] or any(i.startswith("train.max_steps=") for i in args.set)
    epochs_given = args.__dict__["train.epochs"] or any(i.startswith("train.epochs=") for i in args.set)
    if steps_given and not epochs_given and not args.resume:
        cfg.train.epochs = 0.0  # --max-steps replaces the default epochs
    if epochs_given and not steps_given and not args.resume and cfg.train.epochs == 0:
        raise ConfigError("--epochs 0 with no --max-steps says nothing about how long to train; give --epochs N "
                          "(passes over the data) or --max-steps N")
    result = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    status = _report_training(result, "finetune")
    if status == 0 and from_environment().main:
        hints = [f"evaluate:  tinylm eval {result.run_dir}"]
        if cfg.finetune.template:
            hints.append(f"chat:      tinylm sample {result.run_dir} --chat")
        if cfg.finetune.adapter:
            hints.append(f"merge:     tinylm merge {result.run_dir} --out MERGED_RUN")
        console.print("  " + "\n  ".join(hints))
    return status


def cmd_merge(args: argparse.Namespace) -> int:
    from tinylm.run.merge import merge

    summary = merge(args.run_dir, args.out, checkpoint=args.checkpoint)
    untied = " (the adapted head no longer shares the embedding matrix)" if summary["untied"] else ""
    print(f"merged {summary['adapter']} into its base: {summary['params']:,} parameters -> {summary['out_dir']}"
          f"{untied}")
    return 0


def _chat(run, cfg: SampleConfig) -> int:
    """`tinylm sample --chat`: one turn with --prompt; else a conversation, a line per user turn (typed
    at a `you>` prompt in a terminal). Empty input or end of input ends it."""
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if cfg.prompt:
        print(run.chat([*messages, {"role": "user", "content": cfg.prompt}], cfg, template=cfg.template or None))
        return 0
    terminal = sys.stdin.isatty()
    if terminal:
        name = cfg.template or (run.chat_template.name if run.chat_template else "?")
        console.print(f"chatting with {run.run_dir} (template {name});"
                      " an empty line ends")
    while True:
        try:
            line = input("you> ") if terminal else sys.stdin.readline()
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = run.chat(messages, cfg, template=cfg.template or None)
        print(f"bot> {reply}" if terminal else reply, flush=True)
        messages.append({"role": "assistant", "content": reply})
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from tinylm.run import load

    cfg = SampleConfig()
    _apply(cfg, args, prefix="sample.", lists=("stop",))
    cfg.validate()
    run = load(args.run_dir, cfg.checkpoint, cfg.device, cfg.dtype, cfg.quantize, cfg.compile)
    if cfg.chat:
        ignored = [flag for flag, on in (("--num-samples", cfg.num_samples > 1), ("--stream", cfg.stream)) if on]
        if ignored:
            warn(f"{' and '.join(ignored)} do not apply to --chat (one reply per turn, printed whole)")
        return _chat(run, cfg)
    if cfg.stream and (cfg.verbose or cfg.num_return_sequences > 1):
        warn(f"--stream prints whole texts with {'--verbose' if cfg.verbose else '--num-return-sequences'} "
             "(the ids and scores, or the sequences, come at the end)")
    first = True
    for i in range(cfg.num_samples):
        seed = None if cfg.seed is None else cfg.seed + i
        if cfg.stream and not cfg.verbose and cfg.num_return_sequences == 1:
            if not first:
                print("\n" + "-" * 40)
            first = False
            sys.stdout.write(cfg.prompt)
            for piece in run.stream(cfg.prompt, cfg, seed=seed):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            continue
        for completion in run.complete(cfg.prompt, cfg, seed=seed):
            if not first:
                print("\n" + "-" * 40)
            first = False
            if cfg.verbose:
                tokens = [run.tokenizer.decode([t]) for t in completion.prompt_ids]
                print(f"prompt ids ({len(completion.prompt_ids)}): {completion.prompt_ids}")
                print(f"prompt tokens: {tokens}")
                print(f"generated ids ({len(completion.ids)}): {completion.ids}")
                if completion.score is not None:
                    print(f"beam score: {completion.score:.4f}")
                print("text:")
            print(cfg.prompt + completion.text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tinylm.evaluation import evaluate

    cfg = EvalConfig()
    _apply(cfg, args, prefix="eval.")
    tasks = [flag for flag, value in (("--hellaswag", cfg.hellaswag), ("--choices", cfg.choices),
                                      ("--cloze", cfg.cloze)) if value]
    if cfg.tasks or cfg.download_to:
        return _eval_tasks(args, cfg, tasks)
    if not args.run_dir:
        raise ConfigError("give the RUN_DIR to evaluate (or --tasks list to see the benchmarks)")
    defaults = EvalConfig()
    stray = [flag for flag, key in (("--num-fewshot", "num_fewshot"), ("--fewshot-seed", "fewshot_seed"),
                                    ("--task-data", "task_data")) if getattr(cfg, key) != getattr(defaults, key)]
    if stray:
        raise ConfigError(f"{' and '.join(stray)} applies to --tasks (benchmarks by name); add --tasks NAMES")
    if tasks:
        from tinylm.evaluation.multiple_choice import describe, evaluate_choices

        if len(tasks) > 1:
            raise ConfigError(f"give one of {', '.join(tasks)} per `tinylm eval`")
        choice_result = evaluate_choices(args.run_dir, cfg, show_progress=not args.json)
        print(json.dumps(choice_result.to_dict()) if args.json else describe(choice_result))
        return 0
    result = evaluate(args.run_dir, cfg, show_progress=not args.json)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        bpb = f"{result.bits_per_byte:.4f}" if result.bits_per_byte is not None else "n/a"
        print(f"loss {result.loss:.4f} nats/token   perplexity {result.perplexity:.3f}   "
              f"bits/byte {bpb}   ({result.tokens:,} tokens" + (f", {result.bytes:,} bytes)" if result.bytes else ")"))
    return 0


def _eval_tasks(args: argparse.Namespace, cfg: EvalConfig, files: list[str]) -> int:
    """`tinylm eval [RUN_DIR] --tasks ...`: list, download (--download-to) and score benchmarks."""
    from tinylm.evaluation import tasks

    if cfg.tasks.strip() == "list":
        print(tasks.describe_tasks())
        return 0
    others = files + [flag for flag, value in (("--data", cfg.data), ("--text", cfg.text), ("--dataset", cfg.dataset))
                      if value]
    if others:
        raise ConfigError(f"--tasks scores benchmarks by name; give {' or '.join(others)} in another `tinylm eval`")
    if not cfg.tasks:
        raise ConfigError("--download-to needs --tasks NAMES (the benchmarks to download)")
    names = tasks.task_names(cfg.tasks)
    if cfg.download_to:
        for name in names:
            for path in tasks.download(tasks.TASKS[name], cfg.download_to):
                console.print(f"{name}: wrote {path}")
        if not args.run_dir:
            print(f"score offline with:  tinylm eval RUN_DIR --tasks {','.join(names)} --task-data {cfg.download_to}")
            return 0
        cfg.task_data = cfg.task_data or cfg.download_to
    if not args.run_dir:
        raise ConfigError("give the RUN_DIR to score the tasks on (or --download-to DIR to fetch their data only)")
    report = tasks.evaluate_tasks(args.run_dir, cfg, show_progress=not args.json)
    print(json.dumps(report.to_dict()) if args.json else report.table())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "gguf":
        from tinylm.interop.gguf import export_gguf

        summary = export_gguf(args.run_dir, args.out, dtype=args.dtype or "f32", checkpoint=args.checkpoint,
                              chat_template=args.chat_template, overwrite=args.overwrite)
        print(f"exported {summary['weights']} as GGUF ({summary['arch']}, {summary['dtype']}, "
              f"{summary['bytes'] / 1e6:.1f} MB, {summary['tokenizer_model']} tokenizer with pre-tokenizer "
              f"{summary['pre_tokenizer']}) to {summary['out']}\n"
              f"  llama.cpp:  llama-cli -m {summary['out']}\n"
              f"  Ollama:     ollama create NAME -f {summary['modelfile']}")
        return 0
    if args.dtype or args.chat_template:
        raise ConfigError("--dtype and --chat-template are options of --format gguf")
    from tinylm.interop.hf import export_hf

    if args.format == "peft":
        from tinylm.interop.peft import export_peft

        summary = export_peft(args.run_dir, args.out, checkpoint=args.checkpoint, base_model=args.base_model,
                              overwrite=args.overwrite)
        print(f"exported the adapter {summary['weights']} ({summary['tensors']} tensors, targets "
              f"{', '.join(summary['target_modules'])}) as a PEFT {summary['family']} adapter to {summary['out_dir']}; "
              f"load it with peft.PeftModel.from_pretrained(model, {summary['out_dir']!r}) on the base exported "
              f"with `tinylm export {summary['base']} --format hf`")
        return 0
    if args.base_model:
        raise ConfigError("--base-model goes with --format peft")
    summary = export_hf(args.run_dir, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(f"exported {summary['weights']} as {summary['family']} ({summary['params']:,} parameters, with its "
          f"tokenizer) to {summary['out_dir']}; load it with transformers.AutoModelForCausalLM.from_pretrained")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tinylm.interop.hf import import_hf

    summary = import_hf(args.src_dir, args.out, dtype=args.dtype, context=args.context)
    print(f"imported {args.src_dir} ({summary['family']}, {summary['params']:,} parameters, {summary['dtype']}, "
          f"{summary['tokenizer']} tokenizer) into run directory {summary['out_dir']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = ServeConfig()
    _apply(cfg, args, prefix="serve.", lists=("adapter", "allowed_hosts", "cors_origins"))
    try:
        from tinylm.serving import serve
    except ImportError as e:
        raise ConfigError(f"tinylm serve needs the serve extra ({e.name} is missing): pip install 'tinylm[serve]'")
    serve(args.run_dir, cfg)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from tinylm.recipes import describe, markdown_table

    if args.markdown:
        print(markdown_table())
        return 0
    if args.name:
        read_preset(args.name)  # an unknown name is a one-line error listing the presets
        print(describe(args.name, settings=True))
        return 0
    print("\n\n".join(describe(name) for name in preset_names()))
    print("\ntrain one with: tinylm train --preset NAME   (details and settings: tinylm presets NAME)")
    return 0


# --------------------------------------------------------------------------- parser


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
    p.set_defaults(func=cmd_prepare)

    p = verbs.add_parser("datasets", parents=[common], help="list the datasets `tinylm prepare` knows by name")
    p.add_argument("name", nargs="?", metavar="NAME", help="show one dataset's files, URLs and layout")
    p.set_defaults(func=cmd_datasets)

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
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser(
        "finetune", parents=[common], help="fine-tune a run (LoRA or full) on text, instructions or chats",
        description="Fine-tune BASE_RUN (trained or imported) on SOURCE: plain text (continued pre-training), "
                    "instruction records (Alpaca JSON/JSONL) or chat records (JSONL with \"messages\"). LoRA "
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
    p.add_argument("--method", dest="finetune.method", metavar="M", choices=("lora", "full"),
                   help="lora (default: adapters on the frozen base) or full (every weight)")
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
    p.set_defaults(func=cmd_finetune)

    p = verbs.add_parser("sample", parents=[common], help="generate text from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", dest="sample.prompt", metavar="TEXT", help="text to continue (default: none)")
    p.add_argument("--max-new-tokens", dest="sample.max_new_tokens", metavar="N", help="default 500")
    p.add_argument("--temperature", dest="sample.temperature", metavar="T", help="default 0.8; <= 0 is greedy")
    p.add_argument("--top-k", dest="sample.top_k", metavar="K", help="sample among the K likeliest (0 = all)")
    p.add_argument("--seed", dest="sample.seed", metavar="N", help="seed for reproducible samples")
    p.add_argument("--num-samples", dest="sample.num_samples", metavar="N", help="how many samples (default 1)")
    p.add_argument("--top-p", dest="sample.top_p", metavar="P",
                   help="nucleus sampling: the smallest set of tokens whose probability reaches P (default 1 = off)")
    p.add_argument("--min-p", dest="sample.min_p", metavar="P",
                   help="drop tokens less likely than P x the likeliest one's probability (default 0 = off)")
    p.add_argument("--repetition-penalty", dest="sample.repetition_penalty", metavar="R",
                   help="make tokens already in the prompt or output less likely (CTRL; > 1 penalises; default 1)")
    p.add_argument("--beams", dest="sample.beams", metavar="N",
                   help="beam search with N beams (deterministic; default 1 = sampling)")
    p.add_argument("--length-penalty", dest="sample.length_penalty", metavar="A",
                   help="beam score = sum of log-probabilities / length^A (default 1)")
    p.add_argument("--num-return-sequences", dest="sample.num_return_sequences", metavar="N",
                   help="print the N best beams (N <= --beams)")
    p.add_argument("--stop", dest="sample.stop", metavar="TEXT", action="append",
                   help="stop before this text (repeatable); end-of-text tokens always stop")
    p.add_argument("--no-cache", dest="sample.use_cache", action="store_const", const="false",
                   help="no KV cache: run the model over the last `context` tokens for every new token")
    p.add_argument("--stream", dest="sample.stream", action="store_const", const="true",
                   help="print the text as it is generated (default: all at once at the end)")
    p.add_argument("--verbose", dest="sample.verbose", action="store_const", const="true",
                   help="also print the prompt's token ids and tokens and the generated ids (text at the end)")
    p.add_argument("--chat", dest="sample.chat", action="store_const", const="true",
                   help="chat in the run's template: a loop in a terminal (one reply per line read otherwise), "
                        "one turn with --prompt")
    p.add_argument("--system", dest="sample.system", metavar="TEXT", help="the chat's system message")
    p.add_argument("--template", dest="sample.template", metavar="NAME",
                   help="--chat with a run that has no template of its own: alpaca, chat or plain")
    _runtime_flags(p, "sample", checkpoint=True)
    _inference_flags(p, "sample")
    p.set_defaults(func=cmd_sample)

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
                        "random subset of N items")
    p.add_argument("--seed", dest="eval.seed", metavar="N", help="seed of the --limit subset (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

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
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("merge", parents=[common], help="fold a LoRA run's adapter into its base: a standalone run",
                         description="Write RUN_DIR's base weights with its LoRA adapter folded in (W + alpha/r BA) "
                                     "as a standalone run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="MERGED_RUN", help="run directory to write")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which adapter: best (default) or latest")
    p.set_defaults(func=cmd_merge)

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
    p.set_defaults(func=cmd_import)

    p = verbs.add_parser("serve", parents=[common], help="serve a run over an OpenAI-compatible HTTP API",
                         description="Serve RUN_DIR with an OpenAI-compatible API (/v1/completions, "
                                     "/v1/chat/completions, /v1/models), continuous batching, streaming, and a "
                                     "playground page at /. Docs: docs/serving.md.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--host", dest="serve.host", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; others warn without an API key)")
    p.add_argument("--port", dest="serve.port", metavar="N", help="port (default 8000; 0 = any free port)")
    p.add_argument("--model-name", dest="serve.model_name", metavar="NAME",
                   help="the model id clients use (default: the run directory's name)")
    p.add_argument("--api-key", dest="serve.api_key", metavar="KEY",
                   help="require \"Authorization: Bearer KEY\" (default $TINYLM_API_KEY, else none)")
    p.add_argument("--max-batch", dest="serve.max_batch", metavar="N", help="sequences decoding together (16)")
    p.add_argument("--max-queue", dest="serve.max_queue", metavar="N",
                   help="sequences waiting for a slot before requests get 503 (256)")
    p.add_argument("--max-tokens", dest="serve.max_tokens", metavar="N",
                   help="the most new tokens one request may ask for (1024)")
    p.add_argument("--max-body", dest="serve.max_body", metavar="BYTES", help="largest request body (1 MiB)")
    p.add_argument("--chat-template", dest="serve.chat_template", metavar="NAME",
                   help="chat template for runs without their own: alpaca, chat or plain (default: none, "
                        "chat requests get a 400 saying how to get one)")
    p.add_argument("--adapter", dest="serve.adapter", metavar="NAME=ADAPTER_RUN", action="append",
                   help="also serve a LoRA fine-tuned run of this base as model NAME (repeatable)")
    p.add_argument("--allowed-host", dest="serve.allowed_hosts", metavar="NAME", action="append",
                   help="also answer requests whose Host is NAME (.NAME: it and its subdomains; *: any); loopback "
                        "names, IP addresses the server listens on and --host are answered anyway (repeatable)")
    p.add_argument("--cors-origin", dest="serve.cors_origins", metavar="ORIGIN", action="append",
                   help="let web pages of ORIGIN (e.g. https://example.com; *: any) call the API (CORS; repeatable)")
    p.add_argument("--header-timeout", dest="serve.header_timeout", metavar="S",
                   help="close connections whose request headers take longer (10 s)")
    p.add_argument("--body-timeout", dest="serve.body_timeout", metavar="S",
                   help="answer 408 to requests whose body takes longer (30 s)")
    p.add_argument("--write-timeout", dest="serve.write_timeout", metavar="S",
                   help="close connections of clients that take none of their response for this long (30 s)")
    p.add_argument("--shutdown-timeout", dest="serve.shutdown_timeout", metavar="S",
                   help="on Ctrl-C or SIGTERM, let running requests go on this long, then end them (5 s)")
    _runtime_flags(p, "serve", checkpoint=True)
    _inference_flags(p, "serve")
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("presets", parents=[common], help="list the shipped presets and their published results")
    p.add_argument("name", nargs="?", metavar="NAME", help="show one preset with every value it sets")
    p.add_argument("--markdown", action="store_true", help="print the table of presets in Markdown (as in the README)")
    p.set_defaults(func=cmd_presets)
    return parser


def _all_keys() -> list[str]:
    return [k for k in valid_keys(RunConfig()) if k not in ("preset", "description")]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, TinylmWarning):
        console.print(f"[yellow]warning:[/] {escape(str(message))}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except TinylmError as e:
        if args.debug:
            raise
        console.print(f"[red]error:[/] {escape(str(e))}")  # messages quote [brackets]: extras, lists
        return 1
    except BrokenPipeError:  # `tinylm ... | head`: the reader went away; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # permissions, full disk, ... on paths the user chose: the file, the cause, a fix
        if args.debug:
            raise
        console.print(f"[red]error:[/] {escape(fileio.describe(e))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130
    finally:
        warnings.showwarning = _default_showwarning


if __name__ == "__main__":
    sys.exit(main())
