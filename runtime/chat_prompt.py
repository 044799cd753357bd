"""Chat prompts: render a conversation with the model's own chat template, trimmed to fit the context.

The template comes from the model (tokenizer_config.json / chat_template.jinja for folders,
`tokenizer.chat_template` for GGUF). When a model ships none, a built-in one stands in: MiniCPM 1/2's
`<用户>…<AI>` or MiniCPM3/4's ChatML, picked by whether the vocabulary has `<|im_start|>`.
The rendered text is encoded by the model's own tokenizer with special tokens parsed, so both
backends see the same ids.

Templates compile and render in converters.template_sandbox: jinja2's sandbox with what transformers gives
them, under a time and size budget.
A template that reads `enable_thinking` (MiniCPM5, MiniCPM4.1) is a thinking template: the variable is passed
only when the user chose (--think / --no-think), since "undefined" is a third mode of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from converters.errors import UserError
from converters.template_sandbox import PROBE, compile_template, render_budgeted, template_variables

# MiniCPM-2B-sft's published template: the assistant turn has no end marker, </s> ends it.
USER_AI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{'<用户>' + message['content'].strip() + '<AI>'}}"
    "{% else %}{{message['content'].strip()}}{% endif %}{% endfor %}")
# MiniCPM3-4B / MiniCPM4's published template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Markers that end an assistant turn when the model writes them (if the template uses them).
END_OF_TURN = ("<|im_end|>", "<用户>")


@dataclass
class ChatFormat:
    """How one model wants its conversations written."""
    template: str
    source: str  # where the template came from, for the user
    bos_token: str = ""
    eos_token: str = ""
    end_of_turn: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._compiled = compile_template(self.template, self.source)
        self.thinks = "enable_thinking" in template_variables(self.template)

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **variables) -> str:
        """The conversation as text; `variables` (enable_thinking, tools, ...) are passed unless None."""
        variables = {k: v for k, v in variables.items() if v is not None}
        return render_budgeted(self._compiled, self.source, messages, add_generation_prompt=add_generation_prompt,
                               bos_token=self.bos_token, eos_token=self.eos_token, **variables)


def _family_chat_style(model) -> str | None:
    from converters.families import family_named

    family = family_named(model.family)
    return family.chat_style if family else None


def _is_one_token(model, text: str) -> bool:
    return len(model.tokenizer.encode(text, add_special_tokens=False)) == 1


def chat_format(model, template: str | None = None) -> ChatFormat:
    """The chat format of a LoadedModel: its own template, else the built-in one for its family."""
    found, where, bos, eos = model.template_info()
    if template is not None:
        where = "--template"
    elif found:
        template = found
    elif _family_chat_style(model) == "chatml" or _is_one_token(model, "<|im_start|>"):
        template, where = CHATML_TEMPLATE, "built-in ChatML (MiniCPM3/4)"
    else:
        template, where = USER_AI_TEMPLATE, "built-in <用户>…<AI> (MiniCPM 1/2)"
    ends = [m for m in END_OF_TURN if m in template and _is_one_token(model, m)]
    fmt = ChatFormat(template, where, bos, eos, ends)
    fmt.render(PROBE)  # a template that cannot render fails now, not mid-chat
    return fmt


def end_of_turn_ids(model, fmt: ChatFormat) -> set[int]:
    """Token ids that end a reply: the model's eos ids and the template's end-of-turn markers."""
    ids = set(model.eos_ids)
    for marker in fmt.end_of_turn:
        ids.update(model.tokenizer.encode(marker, add_special_tokens=False))
    return ids


def encode_prompt(model, fmt: ChatFormat, messages: list[dict], enable_thinking: bool | None = None) -> list[int]:
    """Rendered and tokenized prompt ids, special tokens parsed, BOS added unless the template wrote it.

    MiniCPM's templates write no BOS: its chat() tokenizes the rendered text with BOS added, as here.
    """
    text = fmt.render(messages, enable_thinking=enable_thinking)
    template_wrote_bos = bool(fmt.bos_token) and text.startswith(fmt.bos_token)
    return model.tokenizer.encode(text, add_special_tokens=not template_wrote_bos)


def trim_history(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> tuple[list[dict], int]:
    """Drop the oldest exchanges (a user message and the replies after it) until count(messages) <= budget.

    A leading system message is always kept, and so is the newest user message; if those alone do not
    fit, that is an error the user must fix. Returns (kept messages, their token count).
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while True:
        kept = system + rest
        n = count(kept)
        if n <= budget:
            return kept, n
        later_user = [i for i, m in enumerate(rest) if m["role"] == "user" and i > 0]
        if not later_user:
            raise UserError(f"the message does not fit the context: the prompt is {n} tokens, "
                            f"room for {budget} (shorten it, or /reset a long system prompt)")
        rest = rest[later_user[0]:]
