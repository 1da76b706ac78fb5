"""Answer accuracy of the assistant's LLM under different system prompts, text in (no audio), greedy.

The 22 questions of `asr_assistant_latency.py`, asked as text; a reply is correct when it contains one of the
question's answer words. Decides the assistant's default system prompt (runtime/audio/assistant.py).

    python benchmarks/assistant_prompts.py [--model X.gguf] [--repeat-penalty 1.0 --repeat-penalty 1.1]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from asr_assistant_latency import QUESTIONS, _words  # noqa: E402

PROMPTS = {
    "previous default": "You are a helpful voice assistant. Answer briefly, in one or two short sentences.",
    "none": None,
    "direct": "You are a helpful voice assistant. Answer the question directly in one short sentence.",
    "answer first": "You are a voice assistant. Give the answer first, in one short sentence.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="LLM (GGUF or artifact; default: the packaged SmolLM2)")
    ap.add_argument("--repeat-penalty", type=float, action="append", default=None)
    args = ap.parse_args()

    import edgerun
    from edgerun.runtime.audio.assistant import SYSTEM_PROMPT

    m = edgerun.load(args.model)
    for name, prompt in PROMPTS.items():
        for rp in args.repeat_penalty or [1.0]:
            ok = 0
            for q, answers in QUESTIONS:
                msgs = ([{"role": "system", "content": prompt}] if prompt else []) + [{"role": "user", "content": q}]
                text = "".join(r.text for r in m.stream_chat(msgs, max_tokens=40, temperature=0.0, repeat_penalty=rp))
                ok += any(w in _words(text) for w in answers)
            mark = " (the assistant's default)" if prompt == SYSTEM_PROMPT else ""
            print(f"{name:>16}{mark}, repeat_penalty {rp}: {ok}/{len(QUESTIONS)} correct")


if __name__ == "__main__":
    main()
