"""Renders one chat template in its own process: ``chat_template.SandboxedTemplate`` runs this file.

A model folder's chat template is untrusted code. Here it is compiled in Jinja's
``ImmutableSandboxedEnvironment`` (the environment transformers uses, with the same globals and
filters), in a process whose address space is capped (``RLIMIT_AS``) and whose output is capped at
``max_chars`` while it is generated; the parent kills it when a rendering runs past its deadline.
So a loop of 10¹⁰ steps, a string of 10¹⁰ characters or a crash costs this process, never the caller.

Protocol, one JSON object a line (UTF-8, surrogates passed through): first
``{"template", "max_chars", "max_bytes"}`` → ``{"ok": true}`` or ``{"error"}``; then per rendering
the template's variables → ``{"text"}`` or ``{"error"}``. Standard library and jinja2 only.
"""

import json
import sys
from datetime import datetime


def _watch_parent() -> None:
    """Exit as soon as the parent is gone (killed mid-rendering): a runaway template never outlives it."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _limit_memory(max_bytes: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def _environment():
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}…{% endgeneration %}`` (transformers' assistant mask): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"underscore attribute {name!r} on a namespace")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = Namespace
    return env


def _reason(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "needs more memory than a template may use"
    if isinstance(e, RecursionError):
        return "recurses too deeply"
    text = " ".join(str(e).split()) or e.__class__.__name__
    line = getattr(e, "lineno", None)
    return f"{e.__class__.__name__} {'at line ' + str(line) + ' ' if line else ''}({text[:200]})"


def _render(template, variables: dict, max_chars: int) -> str:
    parts, n = [], 0
    for piece in template.generate(**variables):
        n += len(piece)
        if n > max_chars:
            raise OverflowError(f"renders more than {max_chars} characters")
        parts.append(piece)
    return "".join(parts)


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this process
    _watch_parent()
    inp = sys.stdin.buffer
    out = sys.stdout.buffer

    def reply(obj) -> None:
        out.write(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
        out.flush()

    setup = json.loads(inp.readline().decode("utf-8", "surrogatepass"))
    max_chars = int(setup["max_chars"])
    _limit_memory(int(setup["max_bytes"]))
    try:
        template = _environment().from_string(setup["template"])
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        reply({"error": f"does not compile: {_reason(e)}"})
        return
    reply({"ok": True})
    for line in inp:
        try:
            variables = json.loads(line.decode("utf-8", "surrogatepass"))
            text = _render(template, variables, max_chars)
        except OverflowError as e:
            reply({"error": str(e) if str(e).startswith("renders more") else f"fails: {_reason(e)}"})
            continue
        except BaseException as e:  # noqa: BLE001 - MemoryError and RecursionError included
            reply({"error": _reason(e) if isinstance(e, (MemoryError, RecursionError)) else f"fails: {_reason(e)}"})
            continue
        reply({"text": text})


if __name__ == "__main__":
    main()
