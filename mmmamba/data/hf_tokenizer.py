"""A Hugging Face teacher's tokenizer and chat template behind our ``ChatTokenizer`` interface.

Loaded with ``transformers.AutoTokenizer`` from the local folder, never with remote code: a folder
whose tokenizer class lives in its own Python files (InternLM2, HoVLE) is read from its
``tokenizer.json`` as a ``PreTrainedTokenizerFast`` instead.

Turns are cut out of the rendered chat template as differences of renderings, so whatever the
template puts around a message (role headers, system prompt, end-of-turn token) is kept exactly.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MmmambaError
from .chat_tokenizer import ChatTokenizer

IMAGE_SPAN = ("<img>", "<IMG_CONTEXT>", "</img>")
_PROBE_USER, _PROBE_REPLY = "Hi.", "Hello."  # stand-in earlier turns when cutting out a later one


def _load_hf(folder: Path):
    if folder.suffix.lower() == ".gguf" and folder.is_file():  # tokenizer and template from the file's metadata
        from ..models.gguf import gguf_hf_tokenizer

        return gguf_hf_tokenizer(folder)
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
    except ImportError:
        raise MmmambaError("Hugging Face tokenizers need transformers: pip install 'mmmamba[hf]'") from None
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as first:
        if (folder / "tokenizer.json").is_file():
            try:
                return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
            except Exception:  # noqa: BLE001 - reported below as one line
                pass
        raise MmmambaError(
            f"{folder}: cannot load its tokenizer without running the folder's code ({first.__class__.__name__}); "
            "add a tokenizer.json (fast tokenizer) to the folder"
        ) from None


class HFTokenizer(ChatTokenizer):
    source = "hf"

    def __init__(self, folder):
        self.folder = Path(folder)
        self.hf = _load_hf(self.folder)
        hf = self.hf
        self.vocab_size = len(hf)
        self.end_id = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
        if self.end_id is None:
            raise MmmambaError(f"{self.folder}: the tokenizer has no eos token; set eos_token in tokenizer_config.json")
        self.bos_id = hf.bos_token_id
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else self.end_id
        self._find_image_span()
        self.template = hf.chat_template
        self.conversation = None  # a conversation template the folder's config names (conversation_templates.py)
        self.conversation_prefix = ""
        self.stop_ids = tuple(dict.fromkeys([self.end_id, *self._turn_end_ids()]))

    # -- ChatTokenizer ------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def _find_image_span(self) -> None:
        unk = self.hf.unk_token_id
        span = [self.hf.convert_tokens_to_ids(t) for t in IMAGE_SPAN]
        self._span = None if any(i is None or i == unk for i in span) else tuple(span)
        self.image_token_id = None if self._span is None else self._span[1]

    def add_image_tokens(self) -> list[int]:
        """Add the image span tokens the vocabulary lacks (as special tokens); returns their new ids."""
        from tokenizers import AddedToken

        hf, unk = self.hf, self.hf.unk_token_id
        missing = [t for t in IMAGE_SPAN if hf.convert_tokens_to_ids(t) in (None, unk)]
        hf.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        self._find_image_span()
        return [hf.convert_tokens_to_ids(t) for t in missing]

    def image_span_ids(self) -> tuple[int, int, int]:
        if self._span is None:
            raise MmmambaError(
                f"{self.folder}: the tokenizer has no {'/'.join(IMAGE_SPAN)} tokens; it is not an image model's"
            )
        return self._span

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def user_turn(self, text: str, first: bool = True, image_tokens: list[int] | None = None) -> list[int]:
        if self.template is None:  # a base model: plain text, a newline between turns
            head = [self.bos_id] if first and self.bos_id is not None else []
            return head + self.encode(text + "\n", image_tokens)
        if first:
            segment = self._render([("user", text)], prompt=True)
        else:
            history = [("user", _PROBE_USER), ("assistant", _PROBE_REPLY)]
            segment = self._cut(self._render(history), self._render([*history, ("user", text)], prompt=True))
        return self.encode(segment, image_tokens)

    def answer(self, text: str) -> list[int]:
        if self.template is None:
            return self.encode(text) + [self.end_id]
        asked = [("user", _PROBE_USER)]
        return self.encode(self._cut(self._render(asked, prompt=True), self._render([*asked, ("assistant", text)])))

    # -- chat template ------------------------------------------------------------------------
    def _render(self, turns, prompt: bool = False) -> str:
        if self.conversation is not None:
            return self.conversation_prefix + self.conversation.render(turns, prompt)
        messages = [{"role": role, "content": content} for role, content in turns]
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    def _cut(self, before: str, after: str) -> str:
        if not after.startswith(before):
            raise MmmambaError(
                f"{self.folder}: the chat template renders earlier turns differently once a turn is added; "
                "mmmamba cannot cut turns out of it — use a template that only appends"
            )
        return after[len(before) :]

    def _turn_end_ids(self) -> list[int]:
        """Special tokens the template closes an answer with (e.g. ``<|im_end|>``): also stop tokens."""
        if self.template is None:
            return []
        special = set(self.hf.all_special_ids) | {
            i for i, t in self.hf.added_tokens_decoder.items() if getattr(t, "special", False)
        }
        tail = self.answer("")
        return [i for i in tail if i in special][:1]
