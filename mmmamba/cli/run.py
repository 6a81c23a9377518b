"""`mmmamba generate` (one prompt) and `mmmamba chat` (a conversation): run a model."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import MmmambaError
from .args import SEED, check_text, float_in, int_in, resolve_device, resolve_dtype


def add_generate(sub) -> None:
    """``generate``."""
    p = sub.add_parser("generate", help="answer one prompt (and image), streaming the tokens")
    _sampling_args(p)
    p.add_argument("--prompt", required=True, help="the user message (with --image, <image> marks where it goes)")
    p.add_argument(
        "--print-prompt", action="store_true", help="print the exact prompt text and its token count, then exit"
    )
    p.add_argument(
        "--prefill-chunk", type=int_in(1, 1 << 24), default=None, help="prefill the prompt in chunks of N tokens"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bfloat16 on CUDA, else float32"
    )
    p.set_defaults(func=cmd_generate)


def add_chat(sub) -> None:
    """``chat``."""
    p = sub.add_parser("chat", help="interactive multi-turn chat; the state is kept between turns")
    _sampling_args(p)
    p.add_argument("--max-context", type=int_in(1, 1 << 24), default=None, help="tokens the session may hold")
    p.set_defaults(func=cmd_chat)


def _sampling_args(p) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (with tokenizer.json)")
    p.add_argument("--image", default=None, help="an image file for the (first) message")
    p.add_argument("--max-new-tokens", type=int_in(1, 1 << 20), default=64, help="answer at most this many tokens")
    p.add_argument("--temperature", type=float_in(0.0, 1e4), default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int_in(0, 1 << 24), default=0, help="0 = off")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="1 = off")
    p.add_argument("--seed", type=SEED, default=None, help="sampling seed (default: none, a fresh draw each run)")
    p.add_argument(
        "--decode", default="auto", choices=["auto", "eager", "graph", "compile"],
        help="decode step: auto = CUDA graph on CUDA, eager on CPU; compile = torch.compile + CUDA graph",
    )  # fmt: skip
    p.add_argument(
        "--ssd-backend", default="auto", choices=["auto", "torch", "fla"],
        help="Mamba-2 scan for the prompt: auto = fla on CUDA when installed, else PyTorch",
    )  # fmt: skip
    p.add_argument(
        "--decode-backend", default="auto", choices=["auto", "torch", "triton"],
        help="Mamba-2 decode step: auto = one fused Triton kernel a layer on CUDA when Triton is installed, "
        "else PyTorch",
    )  # fmt: skip
    p.add_argument(
        "--prefill-mode", default="eager", choices=["eager", "compile"],
        help="the prompt's layers as they are, or their elementwise work compiled by torch.compile "
        "(minutes of compiling first; pays off on long prompts)",
    )  # fmt: skip
    p.add_argument(
        "--chat-template", default=None, metavar="FILE|NAME",
        help="format prompts with this Jinja chat-template file, or a conversation template by name "
        "(internlm2-chat, Hermes-2, phi3-chat, vicuna_v1.1, internvl2_5) instead of the model's own",
    )  # fmt: skip


def _load_for_chat(args):
    from ..data.images import ImageProcessor
    from ..data.tokenizer import IMAGE_MARK, check_fits_model, load_tokenizer
    from ..formats import load_checkpoint
    from ..infer import SamplingConfig

    prompt = check_text(getattr(args, "prompt", "") or "", "--prompt")
    if args.image is None and IMAGE_MARK in prompt:
        raise MmmambaError(f"--prompt contains {IMAGE_MARK} but no --image is given; add --image FILE or drop the mark")
    if args.image is not None and prompt.count(IMAGE_MARK) > 1:
        raise MmmambaError(f"--prompt has {prompt.count(IMAGE_MARK)} {IMAGE_MARK} marks for one --image; keep one")
    if args.image is not None and not Path(args.image).is_file():
        exists = Path(args.image).exists()
        what = "is a folder" if Path(args.image).is_dir() else "is not a regular file" if exists else "does not exist"
        raise MmmambaError(f"--image {args.image}: {what}; give an image file")
    if args.decode_backend == "triton" and not resolve_device(args.device).startswith("cuda"):
        raise MmmambaError("--decode-backend triton runs on a CUDA device; use --decode-backend torch or auto here")
    model = load_checkpoint(args.model).float().eval()
    model.set_backends(ssd=args.ssd_backend, mamba_decode=args.decode_backend, prefill_mode=args.prefill_mode)
    tok = load_tokenizer(args.model, args.chat_template)
    check_fits_model(tok, model.config.vocab_size, args.model)
    image = None
    if args.image:
        if model.config.vision is None:
            raise MmmambaError(f"{args.model} has no image front-end; drop --image")
        image = ImageProcessor(model.config.vision)(args.image)  # (n_tiles, C, S, S)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    return model, tok, image, sampling


class _Stream:
    """Prints byte-level tokens as they arrive, holding back incomplete UTF-8 sequences."""

    def __init__(self, tok):
        self.tok, self.ids, self.shown = tok, [], ""

    def __call__(self, token: int) -> None:
        if token in self.tok.stop_ids:
            return
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if not text.endswith("\ufffd"):
            print(text[len(self.shown) :], end="", flush=True)
            self.shown = text


def _prompt_text(tok, ids) -> str:
    """Prompt ids as text with every special token written out (``<|im_start|>``, each ``<IMG_CONTEXT>``)."""
    if getattr(tok, "hf", None) is not None:
        return tok.hf.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    from ..data.tokenizer import SPECIALS

    out, raw = [], bytearray()
    for i in map(int, ids):
        if i < 256:
            raw.append(i)
            continue
        out += [raw.decode("utf-8", errors="replace"), SPECIALS[i - 256]]
        raw = bytearray()
    return "".join([*out, raw.decode("utf-8", errors="replace")])


def cmd_generate(args) -> None:
    from ..data.images import attach_image
    from ..infer import generate

    if not args.prompt.strip() and args.image is None:
        raise MmmambaError("--prompt: empty; give the user message (or an --image to answer about)")
    device = resolve_device(args.device)
    model, tok, image, sampling = _load_for_chat(args)
    dtype = resolve_dtype(args.dtype, device)
    model = model.to(device, dtype)
    model.fuse_projections()  # inference only: one matmul per layer for q/k/v(/gate/Δ) and for gate/up
    if image is not None:
        image = image.to(dtype)
    text, counts = args.prompt, None
    if image is not None:
        text, counts = attach_image(text, image, model.config.vision)
    import time

    prompt = tok.user_turn(text, image_tokens=counts)
    if not prompt:
        template = getattr(args, "chat_template", None)
        where = f"--chat-template {template}" if template else f"--model {args.model}"
        raise MmmambaError(f"{where}: the chat template renders this prompt as 0 tokens; fix the template")
    if args.print_prompt:  # the exact text and token count the model would receive; nothing is generated
        print(_prompt_text(tok, prompt))
        print(f"-- {len(prompt)} tokens")
        return
    stream = _Stream(tok)
    times: list[float] = []

    def on_token(t) -> None:
        times.append(time.perf_counter())
        stream(int(t[0]))

    t0 = time.perf_counter()
    generate(
        model, [prompt], image, args.max_new_tokens, sampling, tok.stop_ids, tok.pad_id, args.prefill_chunk, on_token,
        args.decode,
    )  # fmt: skip
    print()
    print(generation_speed(len(prompt), t0, times), file=sys.stderr)


def generation_speed(prompt_tokens: int, t0: float, times: list[float]) -> str:
    """``(N tokens in T s: prefill of P tokens X s, then Y tokens/s)``; ``times``: when each token came."""
    if not times:
        return "(no tokens)"
    rate = f", then {(len(times) - 1) / (times[-1] - times[0]):.1f} tokens/s" if len(times) > 1 else ""
    return (
        f"({len(times)} tokens in {times[-1] - t0:.2f} s: prefill of {prompt_tokens} tokens and the first token "
        f"{times[0] - t0:.2f} s{rate})"
    )


CHAT_HELP = """commands (handled here, never sent to the model):
  /help          this list
  /image PATH    attach an image to your next message (the model sees it from that turn on)
  /reset         start a new conversation (the context is emptied)
  /quit          end the chat (an empty line or Ctrl-D too)
Ctrl-C stops an answer mid-way and starts a new conversation; Ctrl-C at the prompt ends the chat."""


def _chat_image(model, name, path: str):
    """An image for the next turn, or a one-line error (the chat goes on)."""
    from ..data.images import ImageProcessor

    if model.config.vision is None:
        raise MmmambaError(f"{name} has no image front-end; it cannot take an image")
    if not Path(path).is_file():
        raise MmmambaError(f"{path}: {'is a folder' if Path(path).is_dir() else 'does not exist'}; give an image file")
    return ImageProcessor(model.config.vision)(path)


def cmd_chat(args) -> None:
    from ..checks import check_stdin_open
    from ..data.tokenizer import IMAGE_MARK
    from ..infer import ChatSession
    from ..io import human_bytes, machine_memory
    from ..models.sizing import cache_bytes

    check_stdin_open()  # before the model loads
    model, tok, image, sampling = _load_for_chat(args)
    length = min(args.max_context or model.config.max_position, model.config.max_position)
    if length <= args.max_new_tokens:
        limit = f"--max-context {length}" if args.max_context else f"the model's max_position {length}"
        raise MmmambaError(
            f"{limit}: leaves no room for a message and a {args.max_new_tokens}-token answer; lower --max-new-tokens "
            f"below {length}" + (" or raise --max-context" if args.max_context else "")
        )
    need = cache_bytes(model.config, 1, length)
    if need > machine_memory() // 2:
        raise MmmambaError(
            f"--model {args.model}: a {length}-token cache needs {human_bytes(need)}, more than half this machine's "
            f"memory; pass a smaller --max-context"
        )
    chat = ChatSession(model, tok, sampling, length, args.decode)
    print(
        f"chat with {args.model} ({length}-token context): type a message; /help lists the commands, "
        "/quit or an empty line ends." + (" Image attached to your first message." if image is not None else "")
    )
    from ..checks import read_message, readable_stdin, scrub

    readable_stdin()
    while True:
        try:
            text, replaced = scrub(read_message("you> ").strip())
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if replaced:
            print(f"(your message held {replaced} byte(s) that are not UTF-8 text; each was replaced by U+FFFD)")
        if text in ("", "/quit", "/exit"):
            break
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command == "/help":
                print(CHAT_HELP)
            elif command == "/reset":
                chat.reset()
                print("(new conversation)")
            elif command == "/image":
                try:
                    image = _chat_image(model, args.model, rest.strip()) if rest.strip() else None
                    print(f"(image {rest.strip()} goes with your next message)" if image is not None else "(no image)")
                except MmmambaError as e:
                    print(f"(error: {e})")
            else:
                print(f"(unknown command {command}; /help lists them. To send text that starts with /, add a space)")
            continue
        if IMAGE_MARK in text and image is None:
            print(f"(no image for {IMAGE_MARK} here: attach one first with /image PATH; the mark is dropped)")
            text = text.replace(IMAGE_MARK, "").strip() or "?"
        print("model> ", end="", flush=True)
        stream = _Stream(tok)
        try:
            check_text(text, "message")
            answer = chat.ask(text, image, args.max_new_tokens, stream)
        except MmmambaError as e:
            print(f"\n(error: {e})")
            continue
        except KeyboardInterrupt:
            chat.reset()
            print("\n(answer stopped; a new conversation starts)")
            continue
        image = None
        print()
        note = "context was full: a new conversation started with this message; " if chat.restarted else ""
        print(f"  ({note}{len(answer)} tokens; context {chat.tokens + 1}/{length})", file=sys.stderr)
