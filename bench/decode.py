"""Decode speed on the same weights: tinylm per precision option, transformers' generate, llama.cpp.

    python bench/decode.py                       # shakespeare-char and tinystories-gpt2 sizes, this CPU
    python bench/decode.py --quick               # tiny sizes and few tokens: a check that it runs
    python bench/decode.py --sizes tinystories-gpt2 --no-compile --repeats 5
    python bench/decode.py --run tinystories-gpt2=runs/tinystories-gpt2   # a trained run's weights

For each model size (`shakespeare-char`: 0.93M parameters, character vocabulary; `tinystories-gpt2`:
30M, GPT-2 vocabulary; random weights unless `--run SIZE=RUN_DIR` gives a run: weights do not change
the speed) one run directory is made, exported with `tinylm export --format hf` (transformers) and
with `tinylm export --format gguf --dtype f32|f16|q8_0` (llama.cpp). GGUF cannot express tinylm's
character tokenizer: for that size the transformers export is converted by llama.cpp's own
`convert_hf_to_gguf.py` instead (`--outtype f32|f16|q8_0`), taken at run time from the
llama-cpp-python source package (`--llama-src`, default: `pip download --no-deps --no-binary :all:
llama-cpp-python==<installed version>` into a temporary folder; nothing of llama.cpp is kept), told
to write the characters as a GPT-2-type vocabulary (decoding takes token ids: the tokenizer does not
matter).

Then, in this one process, greedy decoding of 100 new tokens after a 16-token prompt, batch 1:
  tinylm (`tinylm.load(run, dtype=, quantize=, compile=)` + `generate_ids`): float32, bfloat16
  weights, int8 weight-only, each eager and compiled (`--no-compile` skips those; the compile
  warm-up is reported), the default of `tinylm sample` on this machine, and the old default
  (float32 weights under bfloat16 autocast); transformers `generate` float32 and bfloat16;
  llama.cpp through llama-cpp-python, f32 / f16 / q8_0 with `--llama-threads` (default 2) threads.
Each measurement is the best of `--repeats` rounds (default 3), the engines interleaved round by
round so that they share the machine's load. tokens/s counts the new tokens over the whole call
(prefill included). "weights GB/s" = tokens/s x the bytes of weights one token reads (every linear
layer's weight as stored, the tied output matrix included), against this machine's memory
bandwidth measured here (a 256 MB tensor copy: bytes read + written per second, and a read-only
sum). Then aggregate tokens/s (batch x 100 / seconds) at batch 1, 4, 16, 64 for tinylm's settings
and transformers float32. Prints Markdown tables and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from shakespeare_char import machine  # noqa: E402

from tinylm.config import load_preset  # noqa: E402
from tinylm.data.spec import read_source  # noqa: E402
from tinylm.generation import generate_ids  # noqa: E402
from tinylm.generation.kernels import is_quantized  # noqa: E402
from tinylm.interop.native import NativeCrash  # noqa: E402
from tinylm.model import GPT  # noqa: E402
from tinylm.run import MODEL_FILE, load, save_weights, write_config  # noqa: E402
from tinylm.tokenizers import KINDS, train_tokenizer  # noqa: E402

SIZES = {"shakespeare-char": ("shakespeare-char", "char"), "tinystories-gpt2": ("tinystories-gpt2", "gpt2")}
# (label, dtype, quantize, compile)
OPTIONS = [("float32", "float32", "none", "off"), ("bfloat16 weights", "bfloat16", "none", "off"),
           ("int8 weight-only", "auto", "int8", "off"), ("float32 compiled", "float32", "none", "on"),
           ("bfloat16 compiled", "bfloat16", "none", "on"), ("int8 compiled", "auto", "int8", "on")]

# llama.cpp's converter, told to write a vocabulary it does not recognise (tinylm's characters) as a
# GPT-2-type one instead of stopping: decoding takes token ids, the tokenizer does not matter here
CONVERT = """
import runpy, sys
src = sys.argv.pop(1)
sys.path[:0] = [src, src + "/gguf-py"]
from conversion import base
_pre, _gpt2 = base.TextModel.get_vocab_base_pre, base.TextModel._set_vocab_gpt2
def pre(self, tokenizer):
    try:
        return _pre(self, tokenizer)
    except NotImplementedError:
        return None
def set_gpt2(self):
    tokens, toktypes, tokpre = self.get_vocab_base()
    if tokpre is not None:
        return _gpt2(self)
    self.gguf_writer.add_tokenizer_model("gpt2")
    self.gguf_writer.add_tokenizer_pre("gpt-2")
    self.gguf_writer.add_token_list(tokens)
    self.gguf_writer.add_token_types(toktypes)
    self.gguf_writer.add_token_merges(["a b"])
base.TextModel.get_vocab_base_pre, base.TextModel._set_vocab_gpt2 = pre, set_gpt2
sys.argv[0] = src + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# --------------------------------------------------------------------------- setup


def memory_bandwidth() -> dict[str, float]:
    """GB/s of a 256 MB float32 copy (bytes read + written) and of a read-only sum, best of 5."""
    src = torch.ones(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    best_copy = best_read = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best_copy = min(best_copy, time.perf_counter() - start)
        start = time.perf_counter()
        src.sum()
        best_read = min(best_read, time.perf_counter() - start)
    nbytes = src.numel() * 4
    return {"copy_GBps": 2 * nbytes / best_copy / 1e9, "read_GBps": nbytes / best_read / 1e9}


def make_run(folder: Path, size: str, quick: bool) -> Path:
    """A run directory with the preset's shape (quick: 2 layers of width 64) and random weights."""
    preset, tokenizer_kind = SIZES[size]
    cfg = load_preset(preset)
    cfg.model.dropout = 0.0
    if quick:
        cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model = 2, 2, 64
    if tokenizer_kind == "char":  # the characters of the bundled corpus, as `tinylm train` builds it
        tokenizer = train_tokenizer("char", read_source("shakespeare").documents())
    else:
        tokenizer = KINDS["gpt2"]()
    cfg.model.vocab_size = cfg.model.embedding_rows(tokenizer.vocab_size)
    cfg.validate()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    run = folder / size
    run.mkdir(parents=True)
    tokenizer.save(run)
    save_weights(model, run / MODEL_FILE, {"step": 0, "tokenizer_fingerprint": tokenizer.fingerprint()})
    write_config(run, cfg)
    return run


def llama_source(given: str, work: Path) -> Path:
    """The llama.cpp tree (convert_hf_to_gguf.py, conversion/, gguf-py/) of llama-cpp-python's source
    package: a folder or .tar.gz given, or the installed version's, downloaded with pip."""
    path = Path(given) if given else None
    if path is not None and path.is_dir():
        for candidate in (path, path / "vendor" / "llama.cpp", *path.glob("*/vendor/llama.cpp")):
            if (candidate / "convert_hf_to_gguf.py").is_file():
                return candidate
    if path is None or not path.is_file():
        version = importlib.metadata.version("llama-cpp-python")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(work)], check=True, capture_output=True)
        path = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and (
            m.name.endswith("convert_hf_to_gguf.py") or "/conversion/" in m.name or "/gguf-py/" in m.name)]
        tar.extractall(work, members=members, filter="data")
    return next(work.glob("*/vendor/llama.cpp"))


def gguf_file(run: Path, hf_dir: Path, outtype: str, out: Path, llama_src) -> Path:
    """`tinylm export --format gguf --dtype outtype`, or, for what GGUF export refuses (the char
    tokenizer), llama.cpp's converter on the transformers export. `llama_src()` gives its tree."""
    from tinylm.errors import ExportError
    from tinylm.interop.gguf import export_gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_gguf(run, out, dtype=outtype)
    except ExportError as e:
        print(json.dumps({"bench": "gguf", "file": str(out), "converter": "convert_hf_to_gguf.py",
                          "why": str(e)}), flush=True)
        to_gguf(llama_src(), hf_dir, outtype, out)
    return out


def to_gguf(src: Path, hf_dir: Path, outtype: str, out: Path) -> Path:
    script = out.parent / "convert.py"
    script.write_text(CONVERT)
    result = subprocess.run([sys.executable, str(script), str(src), str(hf_dir), "--outtype", outtype,
                             "--outfile", str(out)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "conversion failed")
    return out


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decoded token reads: every linear layer's weight as stored (int8 data and
    scales for quantized ones; the output layer tied to the embedding counts once, as the head)."""
    total = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            w = m.weight
            if is_quantized(w):
                total += w.qdata.numel() + w.scale.numel() * w.scale.element_size()
            else:
                total += w.numel() * w.element_size()
            if m.bias is not None:
                total += m.bias.numel() * m.bias.element_size()
    return total


# --------------------------------------------------------------------------- engines


class Tinylm:
    def __init__(self, run: Path, dtype: str, quantize: str, compile_: str, autocast_old: bool = False):
        if autocast_old:  # float32 weights as stored, bfloat16 autocast: the default before inference options
            self.run = load(run, device="cpu", dtype="float32", compile="off")
            self.dtype = torch.bfloat16
        else:
            self.run = load(run, device="cpu", dtype=dtype, quantize=quantize, compile=compile_)
            self.run.ready()
            self.dtype = self.run.dtype
        self.bytes = weight_bytes(self.run.model)
        self.warmup_s: float | None = None

    def generate(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        return generate_ids(self.run.model, prompts, n, temperature=0, dtype=self.dtype, device=self.run.device,
                            step=self.run.step)

    def warm(self, prompts: list[list[int]]) -> None:
        self.generate(prompts, 4)
        if self.run.step is not None and self.warmup_s is None:
            self.warmup_s = self.run.step.warmup_s


class Transformers:
    def __init__(self, hf_dir: Path, dtype: torch.dtype):
        import transformers

        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).eval()
        self.bytes = sum(p.numel() * p.element_size() for n, p in self.model.named_parameters()
                         if p.dim() == 2 and "wpe" not in n)

    def generate(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        idx = torch.tensor(prompts)
        with torch.inference_mode():
            out = self.model.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=n,
                                      min_new_tokens=n, pad_token_id=0)
        return out[:, idx.size(1):].tolist()

    def warm(self, prompts: list[list[int]]) -> None:
        self.generate(prompts, 4)


class LlamaCpp:
    """llama.cpp in a child process (tinylm.interop.llama_cpp): a crash there ends this engine's row, not
    the benchmark. Weight repacking stays on (llama.cpp's default) unless a probe decode crashes with it,
    as builds for AMX CPUs do on quantized files (ggml-org/llama.cpp#20824); then the row is measured
    with repacking off and labelled so, and `crash` keeps why."""

    def __init__(self, gguf: Path, threads: int, context: int, model: str = ""):
        from tinylm.interop.llama_cpp import open_llama_cpp

        child = {"model": model, "pythonpath": [str(ROOT / "tests")]} if model else {}
        self.model = open_llama_cpp(str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=context,
                                    n_batch=context, **child)
        self.label = self.model.label
        self.crash = self.model.repack_crash
        self.bytes = gguf.stat().st_size
        self.cpu_s = self.wall_s = 0.0

    def generate(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        outs, self.cpu_s, self.wall_s = [], 0.0, 0.0
        for prompt in prompts:
            result = self.model.greedy(prompt, n)  # timed in the child, whose CPU time this process lacks
            outs.append(result["ids"])
            self.cpu_s += result["cpu_s"]
            self.wall_s += result["wall_s"]
        return outs

    def warm(self, prompts: list[list[int]]) -> None:
        self.generate(prompts, 4)


def timed(engine, prompts: list[list[int]], n: int) -> tuple[float, float, list[list[int]]]:
    """(wall seconds, CPU seconds of the process that decoded, ids) of one generation."""
    cpu, start = time.process_time(), time.perf_counter()
    ids = engine.generate(prompts, n)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if isinstance(engine, LlamaCpp):
        wall, cpu = engine.wall_s, engine.cpu_s
    return wall, cpu, ids


def same_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------- the benchmark


def bench_size(size: str, run: Path, args: argparse.Namespace, work: Path, bandwidth: dict, llama_src) -> list[dict]:
    from tinylm.interop.hf import export_hf

    base = load(run, device="cpu", dtype="float32", compile="off")
    vocab, context, params = base.tokenizer.vocab_size, base.model.cfg.context, base.model.num_params()
    del base
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, vocab, (args.prompt,), generator=gen).tolist()
    hf_dir = work / f"{size}-hf"
    export_hf(run, hf_dir)

    engines: dict[str, object] = {}
    default = load(run, device="cpu", compile="auto")
    default_label = (f"default of tinylm sample ({str(default.dtype).removeprefix('torch.')}"
                     f"{', compiled' if default.compile else ''})")
    options = [o for o in OPTIONS if args.compile or o[3] != "on"]
    engines["float32 weights + bfloat16 autocast (old default)"] = Tinylm(run, "", "", "", autocast_old=True)
    for label, dtype, quantize, compile_ in options:
        engines[f"tinylm {label}"] = Tinylm(run, dtype, quantize, compile_)
    engines[f"tinylm {default_label}"] = Tinylm(run, "auto", "none", "auto")
    engines["transformers float32"] = Transformers(hf_dir, torch.float32)
    engines["transformers bfloat16"] = Transformers(hf_dir, torch.bfloat16)
    notes: dict[str, str] = {}
    if llama_src is not None:
        for outtype in ("f32", "f16", "q8_0"):
            try:
                gguf = gguf_file(run, hf_dir, outtype, work / f"{size}-{outtype}" / "model.gguf", llama_src)
                engine = LlamaCpp(gguf, args.llama_threads, context, args.llama_model)
                if engine.crash:
                    notes[f"llama.cpp {outtype} (llama.cpp defaults)"] = f"crashed: {engine.crash}"
                engines[f"llama.cpp {outtype}{engine.label}"] = engine
            except NativeCrash as e:  # with repacking on and off (not the AMX bug), or a hung probe
                notes[f"llama.cpp {outtype}"] = f"crashed: {e}"
            except Exception as e:  # noqa: BLE001 - a row that cannot run says why
                notes[f"llama.cpp {outtype}"] = f"{type(e).__name__}: {e}"

    def crashed(name: str, e: Exception) -> None:  # a native crash mid-run: that row says so, the rest go on
        notes[name] = f"crashed: {e}"
        del engines[name]

    for name, engine in list(engines.items()):
        try:
            engine.warm([prompt])
        except NativeCrash as e:
            crashed(name, e)
    best: dict[str, tuple[float, float]] = {}
    ids: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for name, engine in list(engines.items()):
            try:
                wall, cpu, out = timed(engine, [prompt], args.tokens)
            except NativeCrash as e:
                crashed(name, e)
                best.pop(name, None)
                continue
            assert len(out[0]) == args.tokens, (name, len(out[0]))
            ids[name] = out[0]
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)

    rows = []
    reference = ids.get("tinylm float32")
    for name, engine in engines.items():
        wall, cpu = best[name]
        tps = args.tokens / wall
        row = {"bench": "decode", "size": size, "params": params, "engine": name, "batch": 1,
               "new_tokens": args.tokens, "prompt_tokens": args.prompt, "tokens_per_s": round(tps, 1),
               "tokens_per_cpu_s": round(args.tokens / cpu, 1) if cpu > 0 else None,
               "weight_MB_per_token": round(engine.bytes / 1e6, 2),
               "weights_GBps": round(tps * engine.bytes / 1e9, 2),
               "of_copy_bandwidth": round(tps * engine.bytes / 1e9 / bandwidth["copy_GBps"], 3),
               "greedy_ids_equal_to_tinylm_float32": same_prefix(ids[name], reference) if reference else None,
               "threads": args.llama_threads if name.startswith("llama.cpp") else torch.get_num_threads(),
               "compile_warmup_s": round(getattr(engine, "warmup_s", None) or 0, 1) or None,
               "machine": machine(), "date": time.strftime("%Y-%m-%d")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for name, why in notes.items():
        row = {"bench": "decode", "size": size, "engine": name, "skipped": why}
        rows.append(row)
        print(json.dumps(row), flush=True)

    curve = []
    if args.batches:
        batch_engines = {k: engines[k] for k in ("tinylm float32", "tinylm bfloat16 weights", "tinylm int8 weight-only",
                                                 "transformers float32")}
        for batch in args.batches:
            prompts = torch.randint(0, vocab, (batch, args.prompt), generator=gen).tolist()
            for name, engine in batch_engines.items():
                best_wall = min(timed(engine, prompts, args.tokens)[0] for _ in range(max(1, args.repeats - 1)))
                row = {"bench": "decode-batch", "size": size, "engine": name, "batch": batch,
                       "new_tokens": args.tokens, "aggregate_tokens_per_s": round(batch * args.tokens / best_wall, 1),
                       "machine": machine(), "date": time.strftime("%Y-%m-%d")}
                curve.append(row)
                print(json.dumps(row), flush=True)
    return rows + curve


def table_cell(text: str, limit: int = 300) -> str:
    """`text` as one Markdown table cell: one line, at most `limit` characters, `|` escaped."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text.replace("|", "\\|")


def tables(rows: list[dict], bandwidth: dict) -> None:
    print(f"\nGreedy decoding, 16-token prompt, new tokens as given, batch 1; {machine()}; torch threads "
          f"{torch.get_num_threads()}; memory bandwidth {bandwidth['copy_GBps']:.1f} GB/s (copy, read + write), "
          f"{bandwidth['read_GBps']:.1f} GB/s (read)")
    for size in dict.fromkeys(r["size"] for r in rows):
        single = [r for r in rows if r["size"] == size and r["bench"] == "decode" and "skipped" not in r]
        skipped = [r for r in rows if r["size"] == size and r["bench"] == "decode" and "skipped" in r]
        ref = {r["engine"]: r["tokens_per_s"] for r in single}
        hf = ref.get("transformers float32")
        q8 = next((t for name, t in ref.items() if name.startswith("llama.cpp q8_0")), None)
        print(f"\n{size} ({single[0]['params'] / 1e6:.2f}M parameters)\n")
        print("| engine | tokens/s | tokens/CPU-s | x transformers f32 | x llama.cpp q8_0 | weights MB/token | "
              "weights GB/s | compile warm-up |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in single:
            t = r["tokens_per_s"]
            print(f"| {r['engine']} | {t:,.1f} | {r['tokens_per_cpu_s'] or 0:,.1f} | "
                  f"{t / hf if hf else float('nan'):.2f} | {t / q8 if q8 else float('nan'):.2f} | "
                  f"{r['weight_MB_per_token']:.1f} | {r['weights_GBps']:.1f} | "
                  f"{str(r['compile_warmup_s']) + ' s' if r['compile_warmup_s'] else ''} |")
        for r in skipped:  # engines that could not run or crashed, with why: one line, one cell
            print(f"| {r['engine']} | {table_cell(r['skipped'])} |||||||")
        batch = [r for r in rows if r["size"] == size and r["bench"] == "decode-batch"]
        if batch:
            sizes = sorted({r["batch"] for r in batch})
            print(f"\naggregate tokens/s by batch size ({size})\n")
            print("| engine | " + " | ".join(f"batch {b}" for b in sizes) + " |")
            print("|---|" + "---:|" * len(sizes))
            for engine in dict.fromkeys(r["engine"] for r in batch):
                cells = {r["batch"]: r["aggregate_tokens_per_s"] for r in batch if r["engine"] == engine}
                print(f"| {engine} | " + " | ".join(f"{cells.get(b, 0):,.1f}" for b in sizes) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--run", action="append", default=[], metavar="SIZE=RUN_DIR",
                    help="use a trained run's weights for that size (default: random weights)")
    ap.add_argument("--tokens", type=int, default=100, help="new tokens per generation (default 100)")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16, 64], help="batch sizes of the curve")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best of them counts (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--llama-threads", type=int, default=2, help="llama.cpp threads (default 2)")
    ap.add_argument("--llama-src", default="", help="llama-cpp-python's source package (.tar.gz or folder)")
    ap.add_argument("--no-llama", action="store_true", help="leave out llama.cpp")
    ap.add_argument("--llama-model", default="", metavar="MODULE:CLASS",
                    help="the child's llama.cpp class (default tinylm's); native_crashers:AMXLikeLlama (tests/) "
                         "crashes as AMX builds do with repacked weights, to check that rows survive it")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the compiled rows")
    ap.add_argument("--quick", action="store_true", help="tiny models, 8 tokens, batches 1 and 2, one round")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.batches = 8, 1, [1, 2]
    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(spec.split("=", 1) for spec in args.run)
    bandwidth = memory_bandwidth()
    print(json.dumps({"bench": "memory-bandwidth", **{k: round(v, 1) for k, v in bandwidth.items()},
                      "threads": torch.get_num_threads(), "machine": machine()}), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinylm-decode-") as tmp:
        work = Path(tmp)
        source: list[Path] = []

        def llama_src() -> Path:  # fetched once, when a GGUF file needs llama.cpp's converter
            if not source:
                source.append(llama_source(args.llama_src, work))
            return source[0]

        for size in args.sizes:
            run = Path(given[size]) if size in given else make_run(work, size, args.quick)
            rows += bench_size(size, run, args, work, bandwidth, None if args.no_llama else llama_src)
    tables(rows, bandwidth)


if __name__ == "__main__":
    main()
