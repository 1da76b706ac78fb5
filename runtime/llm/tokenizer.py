"""Tokenizer of a loaded model: ids from the artifact's tokenizer file, jinja2 for the chat template.

The file is either a `tokenizers` JSON (byte-level BPE vocabularies, HF checkpoints) or the compact
SentencePiece format (export/spm_format.py, run by runtime/spm_tokenizer.py: Gemma, Llama-2 GGUFs).
"""

from __future__ import annotations

import ctypes
import ctypes.util

from edgerun.export.spm_format import is_spm_file


def _raise(message):
    raise ValueError(message)


def release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Parsing a large `tokenizers` JSON allocates and frees hundreds of MB in small pieces that
    glibc keeps mapped (Gemma-3's old 515k-merge file: 371 MB resident after loading, 96 MB after
    trimming)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _HF:
    """A `tokenizers.Tokenizer` behind the interface SpmTokenizer has."""

    def __init__(self, text: str):
        from tokenizers import Tokenizer as _HFTokenizer

        self.tok = _HFTokenizer.from_str(text)

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, special: bool = True) -> list[int]:
        self.tok.encode_special_tokens = not special
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], special: bool = True) -> list[list[int]]:
        self.tok.encode_special_tokens = not special
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_to_id(self, text: str) -> int | None:
        return self.tok.token_to_id(text)


class Tokenizer:
    """encode/decode text with the artifact's tokenizer file and render its chat template."""

    def __init__(self, tokenizer_json: str, info: dict, source: str = "tokenizer.json"):
        """`source` names the file in the one-line CorruptFileError a file that does not parse gives."""
        try:
            if is_spm_file(tokenizer_json):
                from edgerun.runtime.llm.spm_tokenizer import SpmTokenizer

                self._tok = SpmTokenizer(tokenizer_json)
            else:
                self._tok = _HF(tokenizer_json)
        except Exception as e:  # tokenizers raises a bare Exception ("expected `,` at line 1 column 790")
            from edgerun.errors import CorruptFileError

            first = (str(e).splitlines() or [type(e).__name__])[0][:120]
            raise CorruptFileError(f"{source}: not a readable tokenizer ({first}); export the model again") from None
        del tokenizer_json
        release_free_heap()
        self.bos_token_id: int | None = info.get("bos_token_id")
        self.eos_token_id: int | None = info.get("eos_token_id")
        self.bos_token: str | None = info.get("bos_token")
        self.eos_token: str | None = info.get("eos_token")
        self.stop_token_ids: set[int] = set(info.get("stop_token_ids") or []) | (
            {self.eos_token_id} if self.eos_token_id is not None else set()
        )
        self.add_bos: bool = bool(info.get("add_bos", False))
        self.chat_template: str | None = info.get("chat_template")
        self._template = None

    @property
    def vocab_size(self) -> int:
        return self._tok.vocab_size()

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of `text`; `special` parses special tokens like `<|im_start|>` (as llama.cpp's
        `special=True`); `add_bos` defaults to the model's own setting."""
        ids = self._tok.encode(text, special=special)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def encode_batch(self, texts: list[str], special: bool = True) -> list[list[int]]:
        """Token ids of many texts at once (no BOS)."""
        if isinstance(self._tok, _HF):
            return self._tok.encode_batch(texts, special=special)
        return [self._tok.encode(t, special=special) for t in texts]

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of token ids."""
        return self._tok.decode(ids, skip_special=skip_special)

    def token_to_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)

    def require_chat_template(self) -> None:
        """Raise a one-line EdgerunError when the model carries no chat template (a base model)."""
        if not self.chat_template:
            from edgerun.errors import EdgerunError

            raise EdgerunError("this model has no chat template (a base model, not an instruction-tuned one): "
                               "chat and the voice assistant need one; use `edgerun run` / generate() for raw prompts")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render `messages` ([{"role": ..., "content": ...}]) with the model's jinja2 chat template."""
        self.require_chat_template()
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            self._template = env.from_string(self.chat_template)
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a templated conversation (BOS added once, whether or not the template has it)."""
        text = self.apply_chat_template(messages, add_generation_prompt)
        has_bos = bool(self.bos_token) and text.startswith(self.bos_token)
        return self.encode(text, add_bos=False if has_bos else None, special=True)


class StreamDecoder:
    """Turns a growing list of token ids into text pieces without splitting UTF-8 characters.

    Decodes only a short tail of the ids each step (vLLM's incremental detokenizer), so the
    cost per token stays constant however long the generation runs.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the ids whose text is already emitted, kept as context
        self._read = 0  # end of the ids whose text is already emitted

    def push(self, token: int) -> str:
        """Add a token; return the new text it completes ('' while a character is still partial)."""
        self.ids.append(token)
        prefix_text = self.tok.decode(self.ids[self._prefix : self._read])
        new_text = self.tok.decode(self.ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return new_text[len(prefix_text) :]
