"""The `edgerun` command line (typer). Each command calls one public function.

Expected user errors (`EdgerunError`) print one line on stderr and exit with code 1,
without a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="edgerun",
    help="On-device edge AI runtime: export real models to quantized artifacts and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelArg = Annotated[
    str | None,
    typer.Argument(help="Artifact folder, .gguf file or HF checkpoint folder (default: packaged SmolLM2)."),
]

# RAM budget options (runtime/memory.py, docs/memory.md), shared by every command that loads an LLM
RamOpt = Annotated[str | None, typer.Option("--ram", help="RAM budget for the model, e.g. 300MB, 1.5GB.")]
KvWindowOpt = Annotated[int | None, typer.Option("--kv-window", help="KV sliding window (tokens).")]
KvSinksOpt = Annotated[int | None, typer.Option("--kv-sinks", help="Attention-sink tokens kept (default 4).")]
KvBitsOpt = Annotated[int | None, typer.Option("--kv-bits", help="KV cache bits: 16, 8, 4 or 2.")]


def _fail(message: str, code: int = 1):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def user_errors(fn):
    """Turn expected user errors into a one-line message and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edgerun.errors import EdgerunError

        try:
            return fn(*args, **kwargs)
        except EdgerunError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(0) from None

    return wrapper


class _Progress:
    """A rich progress bar for long work (export, model set-up), shown on stderr."""

    def __init__(self, description: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[item]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.description = description
        self.task = None

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int, item: str = ""):
        if self.task is None:  # started on first report, so quick calls print nothing
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=total, item="")
        self.progress.update(self.task, completed=done, total=total, item=item)

    def __exit__(self, *exc):
        if self.task is not None:
            self.progress.stop()


_MODEL_SUFFIXES = (".gguf", ".edge", ".safetensors", ".onnx")


def _names_a_model(arg: str) -> bool:
    """True when a lone `run` argument is a model reference rather than a prompt: one word that ends like a model
    file or names an artifact / Hugging Face folder."""
    if any(c.isspace() for c in arg):
        return False
    path = os.path.expanduser(arg)
    return arg.lower().endswith(_MODEL_SUFFIXES) or any(
        os.path.isfile(os.path.join(path, f)) for f in ("manifest.json", "config.json"))


def _load(model: str | None, threads: int | None, ram=None, kv_window=None, kv_sinks=None, kv_bits=None,
          backend: str | None = None):
    from edgerun.runtime.llm.model import load

    with _Progress("preparing model") as bar:
        return load(model, threads=threads, progress=bar, ram=ram, kv_window=kv_window, kv_sinks=kv_sinks,
                    kv_bits=kv_bits, backend=backend)


BackendOpt = Annotated[str | None, typer.Option(
    help="auto (native C kernels), native, reference, onnxruntime, tvm (the artifact's tvm-llvm module).")]
TargetOpt = Annotated[list[str] | None, typer.Option(
    "--target", help="Also compile for: tvm-llvm (this CPU), tvm-aarch64, tvm-cuda (sm_87, Jetson Orin), "
                     "tvm-cuda-sm90; repeat for several.")]


@app.command()
@user_errors
def export(
    source: Annotated[str, typer.Argument(help="A .gguf file or a Hugging Face checkpoint folder.")],
    out: Annotated[str, typer.Option("-o", "--out", help="Artifact folder to write (NAME.edge).")],
    weights: Annotated[str | None, typer.Option(
        help="Matrices: f16, f32, int8, int4, int4_asym, ternary, auto (keep every GGUF tensor's own "
             "quantization). Default: auto for a .gguf, f16 for a Hugging Face folder.")] = None,
    embeddings: Annotated[str | None, typer.Option(help="Embedding format (default int8 when quantized).")] = None,
    output: Annotated[str | None, typer.Option(help="Output head format (default: as embeddings).")] = None,
    block_size: Annotated[int | None, typer.Option(help="Quantization block size (default per format).")] = None,
    target: TargetOpt = None,
):
    """Export a real model to an edgerun artifact (manifest.json + weights.bin + tokenizer.json)."""
    import json

    from edgerun.export.exporter import export as do_export
    from edgerun.export.recipe import format_error_table

    with _Progress("exporting") as bar:
        path = do_export(source, out, weights=weights, progress=bar, embeddings=embeddings, output=output,
                         block_size=block_size)
    size = (Path(path) / "weights.bin").stat().st_size
    errors = json.loads((Path(path) / "manifest.json").read_text()).get("quant_errors", {})
    typer.echo(format_error_table(errors))
    typer.echo(f"wrote {path} ({size / 1e6:.1f} MB of weights)")
    if target:
        _compile(path, target)


def _compile(path, targets: list[str]) -> None:
    from edgerun.export.tvm_build import compile_tvm

    with _Progress("compiling") as bar:
        libs = compile_tvm(path, targets, progress=bar)
    for lib in libs:
        typer.echo(f"wrote {lib} ({lib.stat().st_size / 1e6:.1f} MB)")


@app.command(name="compile")
@user_errors
def compile_cmd(
    model: ModelArg = None,
    target: TargetOpt = None,
):
    """Compile an artifact's model with Apache TVM for one or more --target (adds tvm/*.so and manifest targets)."""
    from edgerun.runtime.llm.model import resolve_model

    _compile(resolve_model(model), target or ["tvm-llvm"])


@app.command()
@user_errors
def run(
    model: ModelArg = None,
    prompt: Annotated[str | None, typer.Argument(help="Raw prompt (no chat template).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", "-s")] = None,
    threads: int | None = None,
    stats: Annotated[bool, typer.Option(help="Print speed and memory on stderr at the end.")] = False,
    ram: RamOpt = None,
    kv_window: KvWindowOpt = None,
    kv_sinks: KvSinksOpt = None,
    kv_bits: KvBitsOpt = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Do not stop at end-of-text tokens.")] = False,
    backend: BackendOpt = None,
):
    """Continue a raw prompt; streams only the generated text to stdout."""
    if prompt is None:  # `edgerun run "prompt"`: the single argument is the prompt
        if model is None:
            _fail("give a prompt: edgerun run [MODEL] PROMPT")
        if _names_a_model(model):  # `edgerun run X.gguf`: a model and no prompt, not a prompt to continue
            if not os.path.exists(os.path.expanduser(model)):
                from edgerun.runtime.llm.model import model_not_found

                raise model_not_found(model)
            _fail(f"give a prompt after the model: edgerun run {model} PROMPT")
        model, prompt = None, model
    m = _load(model, threads, ram, kv_window, kv_sinks, kv_bits, backend)
    last = None
    for r in m.stream(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                      ignore_eos=ignore_eos):  # fmt: skip
        sys.stdout.write(r.text)
        sys.stdout.flush()
        last = r
    sys.stdout.write("\n")
    if stats and last:
        typer.echo(
            f"prompt {last.prompt_tokens} tok, {last.prompt_tps:.1f} tok/s | decode {last.generated_tokens} tok, "
            f"{last.decode_tps:.1f} tok/s | peak RSS {last.peak_rss_mb:.0f} MB",
            err=True,
        )


@app.command()
@user_errors
def chat(
    model: ModelArg = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.0,
    seed: Annotated[int | None, typer.Option("--seed", "-s")] = None,
    threads: int | None = None,
    ram: RamOpt = None,
    kv_window: KvWindowOpt = None,
    kv_sinks: KvSinksOpt = None,
    kv_bits: KvBitsOpt = None,
    backend: BackendOpt = None,
):
    """Interactive chat using the model's chat template (empty line or Ctrl-D to quit)."""
    m = _load(model, threads, ram, kv_window, kv_sinks, kv_bits, backend)
    m.tokenizer.require_chat_template()
    messages = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    while True:
        try:
            user = input("> " if interactive else "")
        except EOFError:
            break
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        reply = ""
        for r in m.stream_chat(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                               reuse_prefix=True):  # earlier turns stay in the KV cache
            sys.stdout.write(r.text)
            sys.stdout.flush()
            reply += r.text
        sys.stdout.write("\n")
        if r.finish_reason == "loop":
            typer.secho("[reply stopped: it kept repeating itself]", fg=typer.colors.YELLOW, err=True)
        messages.append({"role": "assistant", "content": reply.strip()})


def _format_counts(tensors: dict) -> dict[str, int]:
    """Tensor count per stored format (most frequent first), e.g. {"q5_0": 81, "f32": 73, ...}."""
    from collections import Counter

    return dict(Counter(e["format"] for e in tensors.values()).most_common())


@app.command()
@user_errors
def info(
    model: ModelArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full info as JSON.")] = False,
):
    """Show what an artifact holds: architecture, sizes, recipe, provenance."""
    from edgerun.export.artifact import Artifact
    from edgerun.runtime.llm.model import resolve_model

    with _Progress("preparing model") as bar:
        art = Artifact(resolve_model(model, progress=bar))
    m = art.manifest
    data = {
        "path": str(art.path),
        "arch": m["arch"],
        "config": m["config"],
        "recipe": m.get("recipe"),
        "weights_bytes": m["files"]["weights.bin"]["nbytes"],
        "tensors": len(m["tensors"]),
        "formats": _format_counts(m["tensors"]),
        "layers": len(m.get("layers", [])),
        "targets": m.get("targets"),
        "provenance": m.get("provenance"),
    }
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(show_header=False, title=str(art.path))
    for k in ("arch", "weights_bytes", "tensors", "layers", "targets"):
        t.add_row(k, str(data[k]))
    t.add_row("formats", ", ".join(f"{f} x{n}" for f, n in data["formats"].items()))
    for k, v in data["config"].items():
        t.add_row(f"config.{k}", str(v))
    t.add_row("recipe", json.dumps(data["recipe"]))
    for k, v in (data["provenance"] or {}).items():
        t.add_row(f"provenance.{k}", str(v))
    Console().print(t)


# --- speech commands --- (owned by the speech work: thin wrappers over runtime/audio/commands.py and
# runtime/audio/assistant.py)


@app.command()
@user_errors
def transcribe(
    audio: Annotated[str, typer.Argument(help="Audio file (WAV/FLAC/OGG, any rate, mono or stereo).")],
    stream: Annotated[bool, typer.Option("--stream", help="Streaming recognition: partials, then finals.")] = False,
    model: Annotated[str | None, typer.Option(help="Whisper artifact (default: packaged base, INT8).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
):
    """Speech to text with Whisper (VAD-segmented; `--stream` shows partial results)."""
    from edgerun.runtime.audio.commands import transcribe as _transcribe

    res = _transcribe(audio, stream=stream, model=model, echo=None if as_json else typer.echo)
    if as_json:
        typer.echo(json.dumps(res, indent=1))


@app.command()
@user_errors
def speak(
    text: Annotated[str, typer.Argument(help="Text to say.")],
    out: Annotated[str, typer.Option("-o", "--out", help="WAV file to write.")] = "out.wav",
    voice: Annotated[str | None, typer.Option(help="Piper voice .onnx (default: packaged joe-medium).")] = None,
):
    """Text to speech with a Piper voice (streamed phrase by phrase) into a WAV file."""
    from edgerun.runtime.audio.commands import speak as _speak

    _speak(text, out, voice=voice, echo=typer.echo)


@app.command()
@user_errors
def assistant(
    model: ModelArg = None,
    input: Annotated[str | None, typer.Option("--input", help="Headless: question WAV file.")] = None,
    output: Annotated[str | None, typer.Option("--output", help="Headless: reply WAV file.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 80,
    input_device: Annotated[str | None, typer.Option(help="sounddevice input device (name or index).")] = None,
    output_device: Annotated[str | None, typer.Option(help="sounddevice output device.")] = None,
    seconds: Annotated[float | None, typer.Option(help="Stop the live loop after this many seconds.")] = None,
    ram: RamOpt = None,
    timeline: Annotated[str | None, typer.Option(help="Headless: PNG of where each turn's time went.")] = None,
    realtime: Annotated[bool, typer.Option(help="Headless: play the input at real-time pace through the live loop "
                                                 "(honest latency from the end of speech).")] = False,
):
    """Voice assistant: mic -> VAD -> ASR -> LLM -> TTS -> speaker, with barge-in; or --input/--output files."""
    from edgerun.runtime.audio.assistant import assistant as _assistant

    def dev(d):
        return int(d) if d is not None and d.isdigit() else d

    _assistant(input=input, output=output, model=model, max_tokens=max_tokens, input_device=dev(input_device),
               output_device=dev(output_device), seconds=seconds, echo=typer.echo, ram=ram, timeline=timeline,
               realtime=realtime)


# ---- benchmarks (bench/) -------------------------------------------------------------


@app.command()
@user_errors
def bench(
    model: ModelArg = None,
    vs_llama_cpp: Annotated[str | None, typer.Option("--vs-llama-cpp", help="GGUF to run in llama.cpp.")] = None,
    kernels: Annotated[bool, typer.Option("--kernels", help="Kernel GB/s vs memory bandwidth.")] = False,
    threads: int | None = None,
    n_prompt: int = 128,
    n_decode: int = 64,
    backend: str | None = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ram: Annotated[
        list[str] | None, typer.Option("--ram", help="Sweep these RAM budgets (repeat --ram); 'auto' picks a sweep. "
                                       "With --context: a row per budget and KV width (load(ram=...)).")
    ] = None,
    plot: Annotated[str, typer.Option(help="PNG written by the --ram sweep.")] = "bench_ram.png",
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos/--stop-at-eos", help="Decode all n_decode tokens (default) or stop at end-of-text.")] = True,
    context: Annotated[
        list[int] | None, typer.Option("--context", help="Decode after a prompt of this many tokens (repeatable).")
    ] = None,
    kv_bits: Annotated[
        list[int] | None, typer.Option("--kv-bits", help="With --context: edgerun KV widths (16, 8, 4, 2; repeatable).")
    ] = None,
    kv_type: Annotated[
        list[str] | None, typer.Option("--kv-type", help="With --context: llama.cpp cache types (f16, q8_0, q4_0).")
    ] = None,
    kv_window: Annotated[list[int] | None, typer.Option(
        "--kv-window", help="With --context: also a row per KV width with 4 sinks + this sliding window.")] = None,
    full_cache: Annotated[bool, typer.Option(
        "--full-cache", help="With --context: also the full float cache (no window).")] = False,
    llama_no_fa: Annotated[bool, typer.Option(
        "--llama-no-fa/--llama-fa-only", help="With --context and f16: also llama.cpp's f16 cache without flash "
                                              "attention (default).")] = True,
):
    """Prompt and decode tok/s of edgerun (and llama.cpp on the same weights); --context; --kernels; --ram sweep."""
    import json

    from edgerun.bench import speed as rb

    if context:
        from edgerun.errors import EdgerunError
        from edgerun.runtime.llm.model import resolve_model

        bad = [t for t in (kv_type or []) if t not in rb.GGML_KV]
        if bad:
            raise EdgerunError(f"--kv-type {bad[0]}: use one of {', '.join(rb.GGML_KV)}")
        r = rb.bench_context(resolve_model(model), contexts=context, kv_bits=kv_bits or (16, 8, 4, 2),
                             vs_llama_cpp=vs_llama_cpp, llama_kv=kv_type or ("f16", "q8_0", "q4_0"),
                             n_decode=n_decode, threads=threads, kv_windows=kv_window or (), ram=ram or (),
                             full_cache=full_cache, llama_no_fa=llama_no_fa,
                             progress=None if as_json else typer.echo)  # fmt: skip
        if as_json:
            typer.echo(json.dumps(r, indent=1))
        return

    if ram:
        from edgerun.bench.memory import bench_ram

        budgets = None if ram == ["auto"] else ram
        r = bench_ram(model, ram=budgets, out=plot, threads=threads)
        typer.echo(json.dumps(r, indent=1, default=str) if as_json else f"wrote {r['png']}")
        if not as_json:
            for row in r["rows"]:
                typer.echo(json.dumps(row, default=str))
        return

    if kernels:
        r = rb.bench_kernels_report(threads=threads)
        if as_json:
            typer.echo(json.dumps(r, indent=1))
        else:
            from edgerun.bench.kernels import _print

            bw = r["bandwidth"]
            typer.echo(f"memory: copy {bw['copy_gbs']:.1f} GB/s, read {bw['read_gbs']:.1f} GB/s")
            _print(r["kernels"])
        return
    from edgerun.runtime.llm.model import resolve_model

    path = resolve_model(model)
    r = rb.bench_model(path, vs_llama_cpp=vs_llama_cpp, threads=threads, n_prompt=n_prompt, n_decode=n_decode,
                       backend=backend, ignore_eos=ignore_eos)
    typer.echo(json.dumps(r, indent=1) if as_json else rb.format_bench(r))


# ---- this machine (devices/) ---------------------------------------------------------------------


@app.command()
@user_errors
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    disk: Annotated[bool, typer.Option("--disk/--no-disk", help="Measure the disk read speed (64 MiB).")] = True,
):
    """What this machine is (CPU, SIMD variant the kernels run, cores, RAM, disk, Jetson) and the defaults chosen."""
    import json

    from edgerun.devices.profiles import device_report
    from edgerun.runtime.memory import fmt_bytes
    from edgerun.runtime.store.defaults import cache_dir

    r = device_report(measure_disk=disk, disk_dir=cache_dir())
    if as_json:
        typer.echo(json.dumps(r, indent=1))
        return
    c, m, d, j = r["cpu"], r["memory"], r["defaults"], r["jetson"]
    typer.echo(f"cpu      {c['model']} ({c['arch']}), {c['physical_cores']} cores / {c['logical_cores']} threads")
    typer.echo(f"simd     {c['simd']} (flags: {' '.join(c['kernel_flags']) or '-'}); "
               f"kernels run: {r['kernel_variant'] or 'not built (numpy only)'}")  # fmt: skip
    limit = f", cgroup limit {fmt_bytes(m['cgroup_limit'])}" if m["cgroup_limit"] else ""
    typer.echo(f"memory   {fmt_bytes(m['total'])} total, {fmt_bytes(m['available'])} available{limit}")
    if r["disk_read_bytes_per_s"]:
        typer.echo(f"disk     {fmt_bytes(r['disk_read_bytes_per_s'])}/s cold read (export cache folder)")
    typer.echo(f"jetson   {j['model']} (L4T {j['l4t']}, {j['soc']}, {j['cuda_arch']})" if j else "jetson   no")
    typer.echo(f"profile  {r['profile']['name']}: threads {d['threads']}, under a --ram budget KV "
               f"{d['kv_bits_under_budget']}-bit, window <= {d['max_kv_window']}, {d['prefetch_layers']} "
               f"prefetched layers; suggested --ram {fmt_bytes(d['suggested_ram'])}")  # fmt: skip


# ---- the artifact cache (runtime/store/cache.py) -------------------------------------------------------


@app.command()
@user_errors
def cache(
    prune: Annotated[bool, typer.Option("--prune", help="Delete the stale artifacts.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --prune: only say what would go.")] = False,
):
    """List the artifact cache (size, current or stale); --prune frees the stale exports."""
    from edgerun.runtime.store import cache as rc
    from edgerun.runtime.store.defaults import cache_dir

    if prune:
        gone = rc.prune(dry_run=dry_run)
        verb = "would free" if dry_run else "freed"
        for e in gone:
            typer.echo(f"{e.nbytes / 1e6:9.1f} MB  {e.path.name}  ({e.status})")
        typer.echo(f"{verb} {sum(e.nbytes for e in gone) / 1e6:.1f} MB in {len(gone)} stale artifacts")
        return
    listed = rc.entries()
    typer.echo(f"{cache_dir()}: {sum(e.nbytes for e in listed) / 1e6:.1f} MB")
    for e in listed:
        typer.echo(f"{e.nbytes / 1e6:9.1f} MB  {e.path.name}  {e.status}")
    n = sum(e.stale for e in listed)
    if n:
        typer.echo(f"{n} stale: `edgerun cache --prune` deletes them")


def main():
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
