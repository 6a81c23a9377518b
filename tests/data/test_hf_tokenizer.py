"""Hugging Face tokenizers and chat templates through the same interface as our byte tokenizer."""

import pytest

from mmmamba.data.hf_tokenizer import HFTokenizer
from mmmamba.data.tokenizer import copy_tokenizer, load_tokenizer
from mmmamba.errors import MmmambaError
from tests.formats.hf_folders import write_tokenizer


@pytest.fixture
def folder(tmp_path):
    write_tokenizer(tmp_path)
    return tmp_path


def test_chat_equals_the_rendered_template_and_masks_answers(folder):
    tok = load_tokenizer(folder)
    assert isinstance(tok, HFTokenizer)
    turns = [("what is in the picture?", "a red square"), ("count the shapes", "3")]
    ids, mask = tok.chat(turns)
    messages = [{"role": r, "content": c} for u, a in turns for r, c in (("user", u), ("assistant", a))]
    rendered = tok.hf.apply_chat_template(messages, tokenize=False)
    assert tok.hf.decode(ids) == rendered
    answers = tok.hf.decode([i for i, m in zip(ids, mask) if m])
    assert answers == "a red square<|im_end|>\n3<|im_end|>\n"
    assert tok.stop_ids == (tok.end_id, tok.hf.convert_tokens_to_ids("<|im_end|>"))
    prompt = tok.user_turn("hello there")
    assert tok.hf.decode(prompt) == "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n"


def test_image_marks_expand_to_each_images_count(folder):
    tok = load_tokenizer(folder)
    ids = tok.user_turn("<image>\n<image>\nsame?", image_tokens=[3, 5])
    ctx = tok.hf.convert_tokens_to_ids("<IMG_CONTEXT>")
    start, end = tok.hf.convert_tokens_to_ids("<img>"), tok.hf.convert_tokens_to_ids("</img>")
    assert ids.count(ctx) == 8 and ids.count(start) == ids.count(end) == 2
    first = ids.index(start)
    assert ids[first + 1 : first + 5] == [ctx, ctx, ctx, end]
    with pytest.raises(MmmambaError, match="2 '<image>' mark\\(s\\) but 1 image"):
        tok.user_turn("<image><image>", image_tokens=[3])


def test_base_model_without_template_and_copy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    write_tokenizer(folder, chat_template=None)
    tok = load_tokenizer(folder)
    ids, mask = tok.chat([("hello there", "hi")])
    assert tok.hf.decode(ids) == "<s>hello there\nhi</s>" and tok.stop_ids == (tok.end_id,)
    assert tok.hf.decode([i for i, m in zip(ids, mask) if m]) == "hi</s>"
    dst = tmp_path_factory.mktemp("copy")
    copy_tokenizer(folder, dst)
    assert load_tokenizer(dst).chat([("hello there", "hi")]) == (ids, mask)


def test_folder_without_tokenizer_is_named(tmp_path):
    with pytest.raises(MmmambaError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
