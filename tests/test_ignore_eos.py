"""ignore_eos: a raw prompt whose likeliest next token is end-of-turn stops after one token unless asked not to."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.model

# SmolLM2-Instruct, greedy: after a finished assistant turn the next token is <|im_end|> (a stop token)
PROMPT = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\nYes."


@pytest.fixture(scope="module")
def smollm2():
    import edgerun

    return edgerun.load()


def test_stream_stops_at_eos_unless_ignored(smollm2):
    m = smollm2
    stopped = list(m.stream(PROMPT, max_tokens=6))
    assert len(stopped) == 1 and stopped[0].finish_reason == "stop"
    assert stopped[0].token in m.tokenizer.stop_token_ids and stopped[0].text == ""
    full = list(m.stream(PROMPT, max_tokens=6, ignore_eos=True))
    assert len(full) == 6 and full[-1].finish_reason == "length"
    assert full[0].token == stopped[0].token  # the same greedy token, now decoded as text
    assert full[0].text == m.tokenizer.decode([full[0].token])
    assert m.generate(PROMPT, max_tokens=6, ignore_eos=True) == "".join(r.text for r in full)
    assert m.generate(PROMPT, max_tokens=6) == ""


def test_cli_run_ignore_eos(smollm2):
    def run(*extra):
        return subprocess.run([sys.executable, "-c", "from edgerun.cli import main; main()", "run", str(smollm2.path),
                               PROMPT, "-n", "6", *extra], capture_output=True, text=True, timeout=600)  # fmt: skip

    plain, ignoring = run(), run("--ignore-eos")
    assert plain.returncode == 0 and ignoring.returncode == 0, plain.stderr + ignoring.stderr
    assert plain.stdout == "\n"
    assert ignoring.stdout == smollm2.generate(PROMPT, max_tokens=6, ignore_eos=True) + "\n"

