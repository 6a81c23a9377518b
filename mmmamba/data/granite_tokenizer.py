"""Our tokenizer for a ``granite-hybrid`` export (``mmmamba export --format granite-hybrid``): the byte
tokenizer as its transformers equivalent, a Hugging Face one copied as it is."""

from __future__ import annotations

from .tokenizer import SPECIALS, ByteTokenizer, copy_tokenizer, load_tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (what a ByteLevel pre-tokenizer emits)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<end><|assistant|>"
    "{% else %}{{ m['content'] }}<end>{% endif %}{% endfor %}"
)


def byte_tokenizer_as_hf(tok):
    """Our byte tokenizer as a transformers fast tokenizer with the same ids: byte b is id b (a byte-level BPE
    with no merges), the specials follow, and a chat template that renders our turns."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    hf = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<end>", pad_token="<pad>")
    hf.chat_template = BYTE_CHAT_TEMPLATE
    return hf


def write_granite_tokenizer(src, out) -> dict:
    """The model's tokenizer and chat template beside the export (a byte tokenizer as its transformers
    equivalent); returns the bos / eos / pad ids for config.json."""
    from ..formats.gguf import write_tokenizer

    tok = load_tokenizer(src)
    if isinstance(tok, ByteTokenizer):
        write_tokenizer(byte_tokenizer_as_hf(tok), out)
    else:
        copy_tokenizer(src, out)
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.end_id, "pad_token_id": tok.pad_id}
