"""The package's shape: no import cycles between modules, and each folder imports only the layers below it
(docs/design.md, "Layout"). Every `import` counts, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"build", "tests", "benchmarks", "examples", "scripts", "docs"}

# what each group may import (besides itself, `edgerun.errors` and `edgerun` for its version / public API)
ALLOWED = {
    "quant": set(),
    "kernels": {"quant"},
    "devices": {"kernels"},  # which variant the kernels dispatch to
    "export": {"quant", "kernels", "runtime.models"},
    "runtime.models": {"quant", "kernels", "export", "runtime.backends"},
    "runtime.backends": {"quant", "kernels", "export", "runtime.models", "runtime.llm", "runtime.memory"},
    "runtime.memory": {"quant", "runtime.llm"},
    "runtime.llm": {"quant", "kernels", "export", "devices", "runtime.backends", "runtime.models",
                    "runtime.memory", "runtime.store"},  # kernels: the KV cache attends in C
    "runtime.store": {"export"},
    "runtime.audio": {"quant", "kernels", "export", "runtime.models", "runtime.backends", "runtime.llm",
                      "runtime.memory", "runtime.store", "devices"},
    "bench": {"quant", "kernels", "export", "devices", "runtime.llm", "runtime.memory", "runtime.store",
              "runtime.audio", "runtime.models", "runtime.backends"},
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in SKIP or rel.name == "setup.py":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["edgerun", *parts])] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    targets.append(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
            # an import of the root package itself (`from edgerun import __version__`) is never part of a cycle:
            # the root runs before any submodule can, so only edges into submodules count
            graph[m].update(t for t in targets if t in mods and t not in (m, "edgerun"))
    return graph


def _group(m: str) -> str:
    parts = m.split(".")
    if len(parts) < 2:
        return "edgerun"
    if parts[1] == "runtime" and len(parts) > 2:
        return "runtime." + parts[2]
    return parts[1]


def test_no_import_cycles():
    graph = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_layers_import_only_what_they_may():
    graph = _imports(_modules())
    bad = []
    for m, targets in graph.items():
        g = _group(m)
        if g not in ALLOWED:
            continue
        for t in targets:
            tg = _group(t)
            if tg not in (g, "errors", "edgerun") and tg not in ALLOWED[g]:
                bad.append(f"{m} imports {t}")
    assert not bad, "\n".join(sorted(bad))


def test_the_graph_sees_imports():
    """The checker itself: it finds known edges (so the two tests above cannot pass vacuously)."""
    graph = _imports(_modules())
    assert "edgerun.runtime.memory" in graph["edgerun.runtime.llm.model"]
    assert "edgerun.kernels._lib" in graph["edgerun.kernels.ops"]
    assert "edgerun.bench" not in {_group(t) for t in graph["edgerun.runtime.llm.model"]}


def test_public_api_names():
    """What the README's Python section uses is reachable from `edgerun` itself (no internal module paths)."""
    import edgerun
    from edgerun.runtime.audio.asr import ASR
    from edgerun.runtime.audio.assistant import Assistant
    from edgerun.runtime.audio.tts import TTS
    from edgerun.runtime.llm.model import LLM

    assert callable(edgerun.load) and edgerun.LLM is LLM
    assert edgerun.ASR is ASR and edgerun.TTS is TTS and edgerun.Assistant is Assistant
    from edgerun.export import exporter  # noqa: F401 - binds the package to the name, which must stay callable

    assert callable(edgerun.export) and callable(edgerun.device_report)
