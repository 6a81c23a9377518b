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
from .chat_template import SandboxedTemplate
from .chat_tokenizer import ChatTokenizer

IMAGE_SPAN = ("<img>", "<IMG_CONTEXT>", "</img>")
_PROBE_USER, _PROBE_REPLY = "Hi.", "Hello."  # stand-in earlier turns when cutting out a later one


def _load_hf(folder: Path):
    if folder.suffix.lower() == ".gguf" and folder.is_file():  # tokenizer and template from the file's metadata
        from ..formats.gguf import gguf_hf_tokenizer

        return gguf_hf_tokenizer(folder)
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
    except ImportError:
        raise MmmambaError("Hugging Face tokenizers need transformers: pip install 'mmmamba[hf]'") from None
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as first:
        fix = "add a tokenizer.json (fast tokenizer) to the folder"
        if (folder / "tokenizer.json").is_file():
            try:
                specials = _config_specials(folder)
                fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials)
            except Exception as e:  # noqa: BLE001 - reported below as one line
                fast, fix = None, f"its tokenizer.json cannot be read either ({e.__class__.__name__}); re-save it"
            if fast is not None:
                if fast.chat_template is None:
                    fast.chat_template = _template_file(folder)
                return fast
        raise MmmambaError(
            f"{folder}: cannot load its tokenizer without running the folder's code ({first.__class__.__name__}); {fix}"
        ) from None


def _template_text(template, folder) -> str | None:
    """The chat template to render: a string, or the "default" of named templates."""
    if isinstance(template, dict):
        template = template.get("default")
    if template is not None and not isinstance(template, str):
        raise MmmambaError(f"{folder}: its chat template is not text; fix chat_template in tokenizer_config.json")
    return template


def _plain(special: dict) -> dict:
    return {k: v if isinstance(v, (str, list)) else str(v) for k, v in special.items()}


SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _token_text(v) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    v = v.get("content") if isinstance(v, dict) else v
    return v if isinstance(v, str) and v else None


def _config_specials(folder: Path) -> dict:
    """What tokenizer_config.json says beside tokenizer.json (special tokens, chat template), for a folder whose
    tokenizer class is the folder's own code: the fast tokenizer is built from tokenizer.json with these."""
    f = folder / "tokenizer_config.json"
    if not f.is_file():
        return {}
    from ..io import read_json

    cfg = read_json(f, "tokenizer_config.json")
    out = {k: _token_text(cfg[k]) for k in SPECIAL_KEYS if _token_text(cfg.get(k)) is not None}
    extra = cfg.get("additional_special_tokens") or cfg.get("extra_special_tokens") or []
    extra = [t for t in map(_token_text, extra if isinstance(extra, list) else []) if t is not None]
    if extra:
        out["additional_special_tokens"] = extra
    if isinstance(cfg.get("chat_template"), str):
        out["chat_template"] = cfg["chat_template"]
    return out


def _template_file(folder: Path) -> str | None:
    """A chat template saved beside the tokenizer (chat_template.jinja, or chat_template.json's "chat_template")."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        from ..io import read_json

        template = read_json(folder / "chat_template.json", "chat_template.json").get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _no_eos_fix(folder: Path) -> str:
    """The right advice when the tokenizer has no end-of-sequence id: what the folder's files actually say."""
    eos = _config_specials(folder).get("eos_token") if folder.is_dir() else None
    if eos is None:
        return "set eos_token in tokenizer_config.json"
    return f"its tokenizer_config.json names eos_token {eos!r}, which tokenizer.json's vocabulary lacks; add it there"


class HFTokenizer(ChatTokenizer):
    source = "hf"

    def __init__(self, folder):
        self.folder = Path(folder)
        self.hf = _load_hf(self.folder)
        hf = self.hf
        self.vocab_size = len(hf)
        self.end_id = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
        if self.end_id is None:
            raise MmmambaError(f"{self.folder}: the tokenizer has no eos token; {_no_eos_fix(self.folder)}")
        self.bos_id = hf.bos_token_id
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else self.end_id
        self._find_image_span()
        self.template = _template_text(hf.chat_template, self.folder)
        fix = (
            "re-convert the file with a working tokenizer.chat_template, or use another file"
            if self.folder.suffix.lower() == ".gguf"
            else "fix or replace chat_template in its tokenizer_config.json (or chat_template.jinja)"
        )
        self._sandbox = None if self.template is None else SandboxedTemplate(self.template, self.folder, fix)
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
        """The folder's template (untrusted code) rendered in a sandboxed, time- and size-bound process,
        with the variables transformers gives it (never through transformers' own renderer)."""
        if self.conversation is not None:
            return self.conversation_prefix + self.conversation.render(turns, prompt)
        messages = [{"role": role, "content": content} for role, content in turns]
        variables = {**_plain(self.hf.special_tokens_map), "messages": messages, "add_generation_prompt": prompt}
        return self._sandbox.render(variables)

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
