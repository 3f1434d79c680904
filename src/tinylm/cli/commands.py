"""The verbs of `tinylm`: each reads the parsed flags into its config section and calls the library.

    args ─► _apply: every flag's dest is a config field's dotted name, converted like `--set` ─► config
         ─► the library function (prepare_config, train, finetune.new_config / resumed_config, load(...).generate,
            evaluate, export_*, import_hf, serve, merge) ─► what it returns, printed
"""
from __future__ import annotations

import argparse
import json
import sys

from tinylm.config import (
    DEFAULT_PRESET,
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
)
from tinylm.console import console, warn
from tinylm.errors import ConfigError


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
    from tinylm.training import train
    from tinylm.training.resume import resumed_config

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
        cfg = resumed_config(args.resume, args.set)
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
    from tinylm.training import finetune, train
    from tinylm.training.distributed import from_environment

    given = vars(args)
    if args.resume:
        clash = [flag for flag, value in (("BASE_RUN", args.base_run), ("--data", given["data.source"]),
                                          ("--out", given["train.out_dir"]), ("--preset", args.preset),
                                          ("--config", args.config), ("--method", given["finetune.method"]))
                 if value]
        if clash:
            raise ConfigError(f"{', '.join(clash)} cannot be combined with --resume: a resumed fine-tune keeps its "
                              "base, data and directory")
        cfg = finetune.resumed_config(args.resume, list(_fields(args)), args.set)
    else:
        tables = [(read_preset(args.preset), f"preset {args.preset}")] if args.preset else []
        tables += [(read_toml(args.config), args.config)] if args.config else []
        cfg = finetune.new_config(args.base_run, given["data.source"], given["train.out_dir"],
                                  given["finetune.method"], tables)
    finetune.check_model_changes(args.set)
    steps_given = bool(given["train.max_steps"] or any(i.startswith("train.max_steps=") for i in args.set))
    epochs_given = bool(given["train.epochs"] or any(i.startswith("train.epochs=") for i in args.set))
    apply_overrides(cfg, args.set)
    _apply(cfg, args)
    finetune.settle(cfg, steps_given=steps_given, epochs_given=epochs_given, resume=bool(args.resume))
    result = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    status = _report_training(result, "finetune")
    if status == 0 and from_environment().main:
        hints = [f"evaluate:  tinylm eval {result.run_dir}"]
        if cfg.finetune.template:
            hints.append(f"chat:      tinylm sample {result.run_dir} --chat")
        if cfg.finetune.is_adapter_run:
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
    run = load(args.run_dir, **cfg.load_options())
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
    if cfg.pairs or (not tasks and not (cfg.data or cfg.text or cfg.dataset) and _is_dpo_run(args.run_dir)):
        from tinylm.evaluation.preferences import evaluate_pairs

        if tasks:
            raise ConfigError(f"give one of --pairs, {', '.join(tasks)} per `tinylm eval`")
        pair_result = evaluate_pairs(args.run_dir, cfg)
        print(json.dumps(pair_result.to_dict()) if args.json else pair_result.describe())
        return 0
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


def _is_dpo_run(run_dir: str) -> bool:
    """Whether `run_dir` is a DPO fine-tune (scored by default on its validation pairs)."""
    from tinylm.run.layout import read_config

    try:
        return read_config(run_dir).finetune.objective == "dpo"
    except Exception:  # not a run: evaluate() reports it in its own words
        return False


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
              f"  llama.cpp:  llama-cli -m {summary['out']}{' --no-repack' if summary['no_repack'] else ''}\n"
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
    from tinylm.cli.presets import describe, markdown_table

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
