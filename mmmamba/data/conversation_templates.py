"""The conversation templates HoVLE / InternVL folders name in their config (``"template": "internlm2-chat"``)
instead of carrying a chat template in their tokenizer, as data.

Each template renders a conversation the way the official ``Conversation.get_prompt()`` does
(``conversation.py`` shipped with HoVLE and InternVL 2): the system prompt, then ``sep``; then per
message, its role, ``joiner``, the text and the separator of its place (``seps[i % 2]``: one for
the user's, one for the assistant's); a message still to be written (the generation cue, or an empty
one) is its role followed by ``open_suffix``. The official MPT style is ``seps = (sep, sep)``,
``joiner = open_suffix = ""``; ADD_COLON_TWO (vicuna) is ``joiner = ": "``, ``open_suffix = ":"``.
Generation stops at ``stop`` (the official ``chat()`` stops at the separator's token) or at eos.

``<image>`` in a message is expanded by the tokenizer (``ChatTokenizer.encode``) to ``<img>``, one
``<IMG_CONTEXT>`` per image token (tiles × tokens per tile), ``</img>`` — as ``chat()`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import MmmambaError

# the system message the InternVL 2 / HoVLE releases give their chatml-style templates
INTERNVL_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "  # fmt: skip
    "是一个有用无害的人工智能助手。"
)
INTERNVL25_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、"  # fmt: skip
    "清华大学及多家合作单位联合开发的多模态大语言模型。"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    system_template: str  # "{system_message}" is replaced by the system message
    system_message: str
    roles: tuple[str, str]  # (user, assistant) headers
    seps: tuple[str, str]  # after the system prompt and each user message; after each assistant message
    stop: str  # the token generation stops at
    joiner: str = ""  # between a role and its message
    open_suffix: str = ""  # after the role of the message still to be written

    def render(self, turns: list[tuple[str, str]], prompt: bool = False, system: str | None = None) -> str:
        """(role, text) turns, role "user" | "assistant" | "system" (a system turn replaces the system
        message), + the assistant cue when ``prompt`` → the prompt text, as ``get_prompt()`` builds it."""
        messages = []
        for role, text in turns:
            if role == "system":
                system = text
                continue
            if role not in ("user", "assistant"):
                raise MmmambaError(f"conversation template {self.name!r}: role {role!r} is not user/assistant/system")
            messages.append((self.roles[role == "assistant"], text))
        if prompt:
            messages.append((self.roles[1], None))
        message = self.system_message if system is None else system
        out = self.system_template.replace("{system_message}", message) + self.seps[0]
        for i, (role, text) in enumerate(messages):
            out += f"{role}{self.joiner}{text}{self.seps[i % 2]}" if text else f"{role}{self.open_suffix}"
        return out


CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
CHATML_SYSTEM = "<|im_start|>system\n{system_message}"

TEMPLATES = {
    t.name: t
    for t in (
        ConversationTemplate(
            name="internlm2-chat",
            system_template=CHATML_SYSTEM,
            system_message=INTERNVL_SYSTEM,
            roles=CHATML_ROLES,
            seps=("<|im_end|>", "<|im_end|>"),
            stop="<|im_end|>",
        ),
        ConversationTemplate(  # the same text as internlm2-chat at inference (they differ in training's <s>)
            name="Hermes-2",
            system_template=CHATML_SYSTEM,
            system_message=INTERNVL_SYSTEM,
            roles=CHATML_ROLES,
            seps=("<|im_end|>", "<|im_end|>"),
            stop="<|im_end|>",
        ),
        ConversationTemplate(
            name="internvl2_5",
            system_template=CHATML_SYSTEM,
            system_message=INTERNVL25_SYSTEM,
            roles=CHATML_ROLES,
            seps=("<|im_end|>\n", "<|im_end|>\n"),
            stop="<|im_end|>",
        ),
        ConversationTemplate(
            name="phi3-chat",
            system_template="<|system|>\n{system_message}",
            system_message=INTERNVL_SYSTEM,
            roles=("<|user|>\n", "<|assistant|>\n"),
            seps=("<|end|>", "<|end|>"),
            stop="<|end|>",
        ),
        ConversationTemplate(
            name="vicuna_v1.1",
            system_template="{system_message}",
            system_message=VICUNA_SYSTEM,
            roles=("USER", "ASSISTANT"),
            seps=(" ", "</s>"),
            stop="</s>",
            joiner=": ",
            open_suffix=":",
        ),
    )
}


def get_template(name: str, where: str = "conversation template") -> ConversationTemplate:
    if name not in TEMPLATES:
        raise MmmambaError(
            f"{where}: conversation template {name!r} is unknown; mmmamba renders {list(TEMPLATES)} "
            "(or give the tokenizer a chat template: --chat-template FILE)"
        )
    return TEMPLATES[name]


def named_template(folder) -> str | None:
    """The conversation template a model folder's config.json names: HoVLE / InternVL / a released
    mmMamba (``template``), or a checkpoint of ours converted from one (``conversion.hovle.template``)."""
    f = Path(folder) / "config.json"
    if not f.is_file():
        return None
    try:
        raw = json.loads(f.read_text())
    except (OSError, ValueError):
        return None  # the model loader reports a malformed config.json
    if not isinstance(raw, dict):
        return None
    hovle = (raw.get("conversion") or {}).get("hovle") or {} if isinstance(raw.get("conversion"), dict) else {}
    name = raw.get("template", hovle.get("template") if isinstance(hovle, dict) else None)
    if name is not None and not isinstance(name, str):
        raise MmmambaError(f"{f}: template must be a conversation template's name, got {json.dumps(name)}")
    return name


def use_conversation_template(tok, template: ConversationTemplate) -> None:
    """Make a Hugging Face tokenizer (``HFTokenizer``) render ``template``: its turns, its stop token,
    and the tokens the tokenizer itself adds to a whole prompt (e.g. InternLM2's ``<s>``), as the
    official ``chat()`` tokenizes ``template.get_prompt()`` with them."""
    hf = tok.hf
    bare = hf("x", add_special_tokens=False)["input_ids"]
    full = hf("x", add_special_tokens=True)["input_ids"]
    lead = full[: full.index(bare[0])] if bare and bare[0] in full else []
    tok.conversation = template
    tok.conversation_prefix = hf.decode(lead) if lead else ""
    tok.template = template  # not None: turns are cut out of renderings, not joined with newlines
    stop = hf.convert_tokens_to_ids(template.stop)
    own = [] if stop is None or stop == hf.unk_token_id else [stop]
    tok.stop_ids = tuple(dict.fromkeys([tok.end_id, *own]))


def attach_folder_template(tok, folder) -> None:
    """A tokenizer without a chat template takes the conversation template its folder's config names."""
    if getattr(tok, "source", "") != "hf" or tok.template is not None:
        return
    name = named_template(folder)
    if name is not None:
        use_conversation_template(tok, get_template(name, f"{Path(folder) / 'config.json'}"))


def override_chat_template(tok, spec: str) -> None:
    """``--chat-template``: a Jinja chat-template file, or the name of a conversation template above."""
    if getattr(tok, "source", "") != "hf":
        raise MmmambaError("--chat-template: this model's tokenizer is mmmamba's byte tokenizer, whose format is fixed")
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MmmambaError(f"--chat-template {spec}: cannot read it as UTF-8 ({e.__class__.__name__})") from None
        from .chat_template import SandboxedTemplate

        tok.conversation = None
        tok.hf.chat_template = tok.template = text
        tok._sandbox = SandboxedTemplate(text, path, "fix the template file")  # untrusted code, like a folder's
        tok.stop_ids = tuple(dict.fromkeys([tok.end_id, *tok._turn_end_ids()]))
        return
    if spec in TEMPLATES:
        use_conversation_template(tok, TEMPLATES[spec])
        return
    if path.exists():
        what = "is a folder" if path.is_dir() else "is not a regular file (a device or FIFO)"
        raise MmmambaError(f"--chat-template {spec}: {what}; give a Jinja file or one of {list(TEMPLATES)}")
    raise MmmambaError(
        f"--chat-template {spec}: no such file, nor a conversation template's name; give a Jinja file or one of "
        f"{list(TEMPLATES)}"
    )
