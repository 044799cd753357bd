"""Chat templates are code from the model folder: they compile and render here, in jinja2's
ImmutableSandboxedEnvironment under a budget, so a loop cannot hang a verb and `'x' * 10**10` cannot take
the memory.

The budget: RENDER_SECONDS of wall time (SIGALRM, main thread), RENDER_CHARS of output beyond the
messages' own text, `*` refused when it would repeat a sequence past RENDER_CHARS items and `**` past an
exponent of 1024. Published templates render in about a millisecond. The environment is the one
transformers compiles chat templates in: `tojson` with ensure_ascii / indent / separators / sort_keys
(MiniCPM5's tool section calls `tojson(ensure_ascii=False)`, which plain jinja2's tojson rejects),
`raise_exception` and `strftime_now`.

`check_template` is the test chat makes before its first turn (compile, then render one user message);
convert --to gguf makes it before writing, so a GGUF never carries a template chat would refuse.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import UserError

RENDER_SECONDS = 2.0
RENDER_CHARS = 1 << 20
PROBE = [{"role": "user", "content": "hi"}]  # a template that cannot render this fails at once, not mid-chat


class TemplateBudgetExceeded(Exception):
    pass


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` refused when their result would be larger than the render budget."""
    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > RENDER_CHARS:
                    raise TemplateBudgetExceeded(f"a repetition of {len(seq)} x {n} items")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1024:
            raise TemplateBudgetExceeded(f"a power with exponent {right}")
        return super().call_binop(context, operator, left, right)


@contextlib.contextmanager
def time_budget(seconds: float):
    """Raise TemplateBudgetExceeded in this (main) thread after `seconds` of wall time (SIGALRM)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield  # other threads cannot take signals; the size budget still holds
        return

    def expire(signum, frame):
        raise TemplateBudgetExceeded(f"rendering took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def compile_template(source: str, where: str):
    """A jinja2 template compiled the way transformers compiles chat templates (sandboxed)."""
    import json

    import jinja2

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = BudgetedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        from datetime import datetime

        return datetime.now().strftime(format)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as exc:
        raise UserError(f"{where}: chat template does not compile ({exc})") from None


def template_variables(source: str) -> set[str]:
    """The variables a template reads from its caller.

    Parsed in the budgeted sandbox: jinja2's introspection runs its optimizer, which folds constant
    expressions, and in a plain Environment `{{ 'x' * 10000000000 }}` would be built right here (seen:
    a 24 GB process killed by the kernel)."""
    from jinja2 import meta

    return meta.find_undeclared_variables(BudgetedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(source))


def render_budgeted(compiled, where: str, messages: list[dict], **variables) -> str:
    """`compiled` rendered for `messages` and `variables` under the budget; a template that exceeds it or
    fails is a UserError naming `where`."""
    budget = RENDER_CHARS + sum(len(str(m.get("content", ""))) for m in messages)  # room for the messages
    try:
        parts, size = [], 0
        with time_budget(RENDER_SECONDS):
            for part in compiled.generate(messages=messages, **variables):
                size += len(part)
                if size > budget:
                    raise TemplateBudgetExceeded(f"the output passed {budget} characters")
                parts.append(part)
        return "".join(parts)
    except TemplateBudgetExceeded as exc:
        raise UserError(f"chat template ({where}) exceeds its budget: {exc} (a hostile or broken "
                        "template)") from None
    except Exception as exc:  # jinja errors, and template code failing on the messages
        raise UserError(f"chat template ({where}) failed to render: {type(exc).__name__}: {exc}") from None


def check_template(template: str, where: str, bos_token: str = "", eos_token: str = "") -> None:
    """Chat's test before its first turn: the template compiles and renders PROBE within the budget."""
    render_budgeted(compile_template(template, where), where, PROBE, add_generation_prompt=True,
                    bos_token=bos_token, eos_token=eos_token)
