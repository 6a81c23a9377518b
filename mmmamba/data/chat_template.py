"""A model folder's chat template, rendered as the untrusted code it is.

Every rendering goes to one worker process (``template_worker.py``, started on first use and kept
for the tokenizer's life): Jinja's ``ImmutableSandboxedEnvironment``, an address-space cap
(``MAX_BYTES``), an output cap (``MAX_CHARS``) and a deadline per rendering (``SECONDS``), after
which the worker is killed. Whatever the template does (a syntax error, ``raise_exception()``, an
undefined name, a loop of 10¹⁰ steps, a string of 10¹⁰ characters), the caller gets one line naming
the folder. transformers' ``apply_chat_template`` is never called on a folder's template.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from ..checks import text as check_text
from ..errors import MmmambaError

MAX_CHARS = 16 * 1024**2  # a rendered conversation; the messages themselves count against it too
MAX_BYTES = 2 * 1024**3  # address space of the worker
SECONDS = 10.0  # one rendering (they take milliseconds)
START_SECONDS = 120.0  # starting the worker (a Python interpreter and jinja2, on a loaded machine)
WORKER = Path(__file__).with_name("template_worker.py")


class SandboxedTemplate:
    """``render(variables)`` → the template's text, or a ``MmmambaError`` naming ``source``."""

    def __init__(self, template: str, source, fix: str = "fix or replace the folder's chat template"):
        self.template, self.source, self.fix = template, str(source), fix
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self._pid = os.getpid()  # a forked child starts its own worker rather than share these pipes

    def _fail(self, why: str) -> MmmambaError:
        return MmmambaError(f"{self.source}: its chat template {why}; {self.fix}")

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buf = b""
        setup = {"template": self.template, "max_chars": MAX_CHARS, "max_bytes": MAX_BYTES}
        answer = self._ask(setup, START_SECONDS)
        if "error" in answer:
            self.close()
            raise self._fail(answer["error"])

    def _ask(self, obj: dict, seconds: float) -> dict:
        proc = self._proc
        try:
            proc.stdin.write(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            raise self._fail("stopped its renderer (it crashed)") from None
        line = self._read_line(seconds)
        try:
            return json.loads(line.decode("utf-8", "surrogatepass"))
        except (ValueError, UnicodeDecodeError):
            self.close()
            raise self._fail("answered garbage") from None

    def _read_line(self, seconds: float) -> bytes:
        proc, deadline = self._proc, time.monotonic() + seconds
        fd = proc.stdout.fileno()
        limit = 8 * MAX_CHARS + 1024
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise self._fail(f"did not finish within {seconds:.0f} s (an endless loop?)")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.close()
                raise self._fail("stopped its renderer (it needed too much memory or crashed)")
            self._buf += chunk
            if len(self._buf) > limit:
                self.close()
                raise self._fail(f"renders more than {MAX_CHARS} characters")
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def render(self, variables: dict) -> str:
        if self._pid != os.getpid():
            self._proc, self._pid = None, os.getpid()
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        answer = self._ask(variables, SECONDS)
        if "error" in answer:
            raise self._fail(answer["error"])
        text = answer.get("text")
        if not isinstance(text, str):
            raise self._fail("answered garbage")
        try:
            return check_text(text, "output")
        except MmmambaError:
            raise self._fail("writes text that is not valid UTF-8 (an unpaired surrogate)") from None

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            proc.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the modules may be gone
            pass

    def __getstate__(self):  # a copy (copy.deepcopy) starts its own renderer
        return {"template": self.template, "source": self.source, "fix": self.fix}

    def __setstate__(self, state):
        self.__init__(state["template"], state["source"], state["fix"])
