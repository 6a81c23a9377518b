"""Conversation templates that HoVLE / InternVL folders name in config.json (``"template": ...``).

The expected prompts are written by hand from the official ``Conversation.get_prompt()`` (HoVLE's and
InternVL 2's ``conversation.py``): MPT style (system prompt + sep, then role + message + sep, the
cue a bare role) and ADD_COLON_TWO (vicuna: ``ROLE: message`` with seps alternating " " / "</s>").
"""

import pytest

import mmmamba
from mmmamba.cli.main import main
from mmmamba.convert import convert_to_mamba
from mmmamba.data.conversation_templates import TEMPLATES, get_template, use_conversation_template
from mmmamba.data.tokenizer import load_tokenizer
from mmmamba.formats import save_checkpoint
from tests.formats.hf_folders import write_hovle

ZH = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
Q1, A1, Q2, A2 = "<image>\nwhat is in the picture?", "a red square", "count the shapes", "3"

# (template, single turn without image, two turns with the image in the first and the cue)
EXPECTED = {
    "internlm2-chat": (
        f"<|im_start|>system\n{ZH}<|im_end|><|im_start|>user\nhello there<|im_end|><|im_start|>assistant\n",
        f"<|im_start|>system\n{ZH}<|im_end|><|im_start|>user\n<image>\nwhat is in the picture?<|im_end|>"
        "<|im_start|>assistant\na red square<|im_end|><|im_start|>user\ncount the shapes<|im_end|>"
        "<|im_start|>assistant\n",
    ),
    "Hermes-2": (
        f"<|im_start|>system\n{ZH}<|im_end|><|im_start|>user\nhello there<|im_end|><|im_start|>assistant\n",
        f"<|im_start|>system\n{ZH}<|im_end|><|im_start|>user\n<image>\nwhat is in the picture?<|im_end|>"
        "<|im_start|>assistant\na red square<|im_end|><|im_start|>user\ncount the shapes<|im_end|>"
        "<|im_start|>assistant\n",
    ),
    "phi3-chat": (
        f"<|system|>\n{ZH}<|end|><|user|>\nhello there<|end|><|assistant|>\n",
        f"<|system|>\n{ZH}<|end|><|user|>\n<image>\nwhat is in the picture?<|end|><|assistant|>\na red square<|end|>"
        "<|user|>\ncount the shapes<|end|><|assistant|>\n",
    ),
    "vicuna_v1.1": (
        f"{VICUNA} USER: hello there ASSISTANT:",
        f"{VICUNA} USER: <image>\nwhat is in the picture? ASSISTANT: a red square</s>USER: count the shapes ASSISTANT:",
    ),
}
STOPS = {"internlm2-chat": "<|im_end|>", "Hermes-2": "<|im_end|>", "phi3-chat": "<|end|>", "vicuna_v1.1": "</s>"}
PHI3 = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]  # special tokens in Phi-3's vocabulary


@pytest.mark.parametrize("name", list(EXPECTED))
def test_templates_render_as_the_official_get_prompt(name):
    single, multi = EXPECTED[name]
    t = get_template(name)
    assert t.render([("user", "hello there")], prompt=True) == single
    assert t.render([("user", Q1), ("assistant", A1), ("user", Q2)], prompt=True) == multi
    # a finished conversation ends with the assistant's separator; a system turn replaces the message
    done = t.render([("user", Q1), ("assistant", A1), ("user", Q2), ("assistant", A2)])
    cue = t.roles[1] + t.open_suffix
    assert done == multi.removesuffix(cue) + t.roles[1] + t.joiner + A2 + t.seps[1] and t.stop == STOPS[name]
    assert t.render([("system", "Be brief."), ("user", "hi")], prompt=True) == single.replace(
        t.system_message, "Be brief."
    ).replace("hello there", "hi")


def folder_with(tmp_path, name):
    write_hovle(tmp_path, chat_template=None, template=name, specials_extra=PHI3)
    return load_tokenizer(tmp_path)


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("tiles", [1, 3])
def test_a_folder_without_a_chat_template_speaks_its_named_template(tmp_path, name, tiles):
    tok = folder_with(tmp_path, name)
    per = 4  # tokens per tile of the tiny HoVLE
    single, multi = EXPECTED[name]
    assert tok.user_turn("hello there") == tok.hf(single, add_special_tokens=False)["input_ids"]
    image = "<img>" + "<IMG_CONTEXT>" * (per * tiles) + "</img>"  # one span for all of an image's tiles
    t = get_template(name)
    cue = t.roles[1] + t.open_suffix
    first = multi[: multi.index(cue) + len(cue)]
    ids = tok.user_turn(Q1, image_tokens=[per * tiles])
    assert ids == tok.hf(first.replace("<image>", image), add_special_tokens=False)["input_ids"]
    assert ids.count(tok.image_token_id) == per * tiles
    stop = tok.hf.convert_tokens_to_ids(STOPS[name])
    assert set(tok.stop_ids) == {tok.end_id, stop}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_turn_cutting_gives_the_official_answer_spans(tmp_path, name):
    """``chat()`` (what distillation's loss masks come from) = the official full text, answers masked
    exactly where the assistant's messages and their separators are."""
    tok = folder_with(tmp_path, name)
    t = get_template(name)
    turns = [(Q1, A1), (Q2, A2), ("and now?", "nothing more")]
    ids, mask = tok.chat(turns, image_tokens=[8])
    messages = [(role, text) for q, a in turns for role, text in (("user", q), ("assistant", a))]
    text = t.render(messages).replace("<image>", "<img>" + "<IMG_CONTEXT>" * 8 + "</img>")
    assert ids == tok.hf(text, add_special_tokens=False)["input_ids"]
    spans, at = [], 0
    cue = t.roles[1] + t.open_suffix
    for _, answer in turns:  # what follows the assistant's cue: " " (vicuna) + answer + its separator
        piece = t.joiner.removeprefix(t.open_suffix) + answer + t.seps[1]
        start = text.index(cue + piece, at) + len(cue)
        at = start + len(piece)
        spans.append(tuple(len(tok.hf(text[:c], add_special_tokens=False)["input_ids"]) for c in (start, at)))
        assert tok.hf.decode(ids[spans[-1][0] : spans[-1][1]]) == piece
    assert mask == [any(a <= i < b for a, b in spans) for i in range(len(ids))]


def test_tokens_the_tokenizer_adds_to_a_prompt_come_first(tmp_path):
    """The official chat() tokenizes the whole prompt with special tokens (InternLM2 adds <s>)."""
    from tokenizers.processors import TemplateProcessing

    tok = folder_with(tmp_path, "internlm2-chat")
    bos = tok.hf.convert_tokens_to_ids("<s>")
    tok.hf._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    use_conversation_template(tok, TEMPLATES["internlm2-chat"])
    single = EXPECTED["internlm2-chat"][0]
    assert tok.user_turn("hello there") == tok.hf(single)["input_ids"] and tok.user_turn("hello there")[0] == bos
    later = tok.user_turn("hi", first=False)
    assert bos not in later and tok.hf.decode(later, skip_special_tokens=False).startswith("<|im_start|>user\nhi")


def test_an_own_chat_template_wins_and_unknown_names_are_refused(tmp_path):
    write_hovle(tmp_path / "own", template="internlm2-chat")  # the tokenizer has a chat template: kept
    tok = load_tokenizer(tmp_path / "own")
    assert tok.conversation is None and "<|im_start|>system" not in tok.hf.decode(tok.user_turn("hi"))
    write_hovle(tmp_path / "bad", chat_template=None, template="klingon-chat")
    with pytest.raises(mmmamba.MmmambaError, match="conversation template 'klingon-chat' is unknown"):
        load_tokenizer(tmp_path / "bad")
    assert load_tokenizer(tmp_path / "bad", "vicuna_v1.1").conversation is TEMPLATES["vicuna_v1.1"]  # overridden


def test_converted_students_keep_the_teachers_template(tmp_path):
    write_hovle(tmp_path / "teacher", chat_template=None, template="phi3-chat", specials_extra=PHI3)
    student = convert_to_mamba(mmmamba.from_pretrained(tmp_path / "teacher"), [0])
    save_checkpoint(student, tmp_path / "student")
    (tmp_path / "teacher" / "tokenizer.json").rename(tmp_path / "student" / "tokenizer.json")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (tmp_path / "teacher" / name).is_file():
            (tmp_path / "teacher" / name).rename(tmp_path / "student" / name)
    tok = load_tokenizer(tmp_path / "student")
    assert tok.conversation is TEMPLATES["phi3-chat"]


def test_print_prompt_shows_the_exact_text_and_count(tmp_path, capsys):
    write_hovle(tmp_path / "m", chat_template=None, template="internlm2-chat")
    from PIL import Image

    Image.new("RGB", (130, 60), "red").save(tmp_path / "wide.png")  # 2 tiles + a thumbnail: 3 × 4 tokens
    args = ["generate", "--model", str(tmp_path / "m"), "--prompt", "what is it?", "--print-prompt"]
    assert main([*args, "--image", str(tmp_path / "wide.png")]) == 0
    out = capsys.readouterr().out
    image = "<img>" + "<IMG_CONTEXT>" * 12 + "</img>"
    text = f"<|im_start|>system\n{ZH}<|im_end|><|im_start|>user\n{image}\nwhat is it?<|im_end|><|im_start|>assistant\n"
    n = len(load_tokenizer(tmp_path / "m").hf(text, add_special_tokens=False)["input_ids"])
    assert out.endswith(f"{text}\n-- {n} tokens\n")
    # overridden by name, and by a Jinja file
    assert main([*args, "--chat-template", "vicuna_v1.1"]) == 0
    assert capsys.readouterr().out.startswith(f"{VICUNA} USER: what is it? ASSISTANT:\n-- ")
    jinja = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    jinja += "{% if add_generation_prompt %}assistant: {% endif %}"
    (tmp_path / "t.jinja").write_text(jinja)
    assert main([*args, "--chat-template", str(tmp_path / "t.jinja")]) == 0
    assert capsys.readouterr().out.startswith("user: what is it?\nassistant: \n-- ")
    assert main([*args, "--chat-template", "nope"]) == 2
    assert "--chat-template nope: no such file" in capsys.readouterr().err


def test_a_template_that_renders_nothing_is_one_line_naming_it(tmp_path, capsys):
    write_hovle(tmp_path / "m", chat_template=None, template="internlm2-chat")
    (tmp_path / "empty.jinja").write_text("")
    argv = ["generate", "--model", str(tmp_path / "m"), "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu"]
    assert main([*argv, "--chat-template", str(tmp_path / "empty.jinja")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "empty.jinja" in err and "0 tokens" in err, err
