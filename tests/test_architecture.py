"""The package's shape, read from the source with `ast` (no module is imported):

    every src/tinylm/**/*.py ─► its tinylm imports (module level and inside functions alike; there are no
    `if TYPE_CHECKING:` blocks to skip) ─► a graph of modules ─► (a) no cycle, (b) no import from a lower
    layer up to a higher one (LAYERS, docs/architecture.md), (c) no private name imported across modules,
    (d) src/tinylm/serving holds no decode loop (it uses the generation engine's public API only).

`from tinylm.pkg import name` is an edge to the submodule tinylm.pkg.name when there is one, else to
tinylm.pkg (its __init__, which holds or re-exports the name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tinylm"

# Lower layers first. A module may import its own layer and those below it, never one above.
# Within a layer the packages do not import each other (the cycle test holds them apart where they would).
LAYERS = [
    {"errors", "version", "console"},  # leaves
    {"fileio"},
    {"runtime"},  # device, dtype, autocast
    {"config"},  # typed config, field checks, presets
    {"tokenizers"},
    {"chat"},  # templates, message encoding (a tokenizer's ids)
    {"data"},  # sources, preparation, loaders, fine-tuning records (chat-encoded)
    {"model"},  # GPT, KV cache, LoRA
    {"generation"},  # the engine: takes a model object, imports no model code
    {"run"},  # run directory, weights formats, Run (model + tokenizer + engine)
    {"evaluation"},
    {"training"},  # evaluates during training
    {"interop"},  # export / import of runs
    {"serving"},  # HTTP over Run and the engine
    {"cli", "__main__"},  # parses and calls
    {"__init__"},  # the public API (tinylm.load, tinylm.Run: imported lazily)
]

# what the server may take from the generation engine: requests in, events out
ENGINE_API = {"Closing", "Event", "QueueFull", "Request", "Row", "TokenLogprob"}
# what belongs to the decode loop: the model's forward parts, the KV cache, the sampler, the engine's step
DECODE_ATTRIBUTES = {"features", "head", "forward", "new_cache", "copy_rows", "sample_next", "step"}
DECODE_NAMES = {"KVCache", "DecodeStep", "sample_next", "generate_ids", "stream_ids", "Engine"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def imports(name: str) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every tinylm import of module `name`."""
    out = []
    is_package = MODULES[name].name == "__init__.py"
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "tinylm"]
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            if source.split(".")[0] == "tinylm":
                out += [(source, a.name, node.lineno) for a in node.names]
    return out


def edges(name: str) -> dict[str, int]:
    """The modules `name` imports, with the line of the first import."""
    out: dict[str, int] = {}
    for source, taken, line in imports(name):
        target = f"{source}.{taken}" if taken and f"{source}.{taken}" in MODULES else source
        if target != name:
            out.setdefault(target, line)
    return out


GRAPH = {name: edges(name) for name in MODULES}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else "__init__"
    ranks = [i for i, group in enumerate(LAYERS) if top in group]
    assert ranks, f"{name}: its package {top!r} is in no layer of LAYERS; add it (and to docs/architecture.md)"
    return ranks[0]


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_is_read():
    assert len(MODULES) > 50 and "tinylm.generation.engine" in MODULES and "tinylm.serving.app" in MODULES
    assert all(target in MODULES for targets in GRAPH.values() for target in targets), \
        sorted({t for ts in GRAPH.values() for t in ts if t not in MODULES})


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {GRAPH[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_cycle_finder_finds_a_cycle():
    graph = {name: dict(targets) for name, targets in GRAPH.items()}
    graph["tinylm.errors"]["tinylm.cli.commands"] = 1  # the deepest leaf importing the top
    assert find_cycle(graph)[0] == find_cycle(graph)[-1]


def test_no_import_goes_up_a_layer():
    bad = [f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)}) at line {line}"
           for name, targets in GRAPH.items() for target, line in targets.items() if layer(target) > layer(name)]
    assert not bad, "imports from a lower layer up to a higher one (see LAYERS):\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = [f"{name}:{line} imports {taken or source} from {source}" for name in MODULES
           for source, taken, line in imports(name)
           if any(part.startswith("_") and part not in ("__init__", "__main__", "__version__")
                  for part in [*source.split("."), *([taken] if taken else [])])]
    assert not bad, "private names imported across modules (make them public or keep them in one module):\n" + \
        "\n".join(bad)


SERVING = [name for name in MODULES if name.startswith("tinylm.serving")]


@pytest.mark.parametrize("name", SERVING)
def test_serving_holds_no_decode_loop(name):
    """The server is HTTP only: it imports no model code and no torch, takes from the generation
    engine only its requests and events, and calls nothing of the model, the KV cache or the sampler."""
    bad = []
    for source, taken, line in imports(name):
        if source.startswith("tinylm.model") or (source == "tinylm" and taken == "model"):
            bad.append(f"line {line}: imports {source}")
        if source.startswith("tinylm.generation") and taken not in ENGINE_API:
            bad.append(f"line {line}: imports {taken or source} from {source} (only {sorted(ENGINE_API)})")
    for node in ast.walk(TREES[name]):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bad += [f"line {node.lineno}: imports {m}" for m in mods if m.split(".")[0] == "torch"]
        if isinstance(node, ast.Attribute) and node.attr in DECODE_ATTRIBUTES:
            bad.append(f"line {node.lineno}: uses .{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr == "model" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "run":
            bad.append(f"line {node.lineno}: reaches the model (run.model)")
        if isinstance(node, ast.Name) and node.id in DECODE_NAMES:
            bad.append(f"line {node.lineno}: uses {node.id}")
    assert not bad, f"{name} must leave decoding to the generation engine:\n" + "\n".join(bad)
