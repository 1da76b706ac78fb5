"""libFuzzer (atheris) entry for one target: `python atheris_main.py TARGET [libFuzzer flags] CORPUS_DIR`.

edgerun's readers, gguf-py and the targets are instrumented for coverage. EdgerunError is the expected
outcome of a bad input; any other exception is a crash libFuzzer writes out (see run.py)."""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))
with atheris.instrument_imports(include=["edgerun", "gguf", "targets"]):  # lazily imported modules listed too
    import edgerun.export.artifact
    import edgerun.export.ct2
    import edgerun.export.exporter
    import edgerun.export.gguf_reader
    import edgerun.export.hf_reader
    import edgerun.export.recipe
    import edgerun.export.spm_format
    import edgerun.export.tokenizer_builder
    import edgerun.quant
    import edgerun.runtime.audio.wavio
    import edgerun.runtime.llm.spm_tokenizer
    import edgerun.runtime.llm.tokenizer  # noqa: F401
    import gguf
    import gguf.quants  # noqa: F401
    import targets

from edgerun.errors import EdgerunError

fn, _ = targets.TARGETS[sys.argv.pop(1)]


def one(data: bytes) -> None:
    try:
        fn(data)
    except EdgerunError:
        pass


atheris.Setup(sys.argv, one)
atheris.Fuzz()
