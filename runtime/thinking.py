"""Split a streamed reply of a thinking model into its reasoning and its answer.

Thinking templates (MiniCPM5, MiniCPM4.1) put the reasoning between `<think>` and `</think>`: with
enable_thinking true the prompt itself ends inside `<think>\\n`, with false it ends after an empty
`<think>\\n\\n</think>\\n\\n`, and left undefined the model may open `<think>` itself as its first words.
Markers are matched in the decoded text, so it does not matter whether the tokenizer has them as single
tokens or spells them in pieces; a piece that ends in a marker's prefix waits for the next one.
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether the rendered prompt leaves a `<think>` open (the reply starts inside the reasoning)."""
    return prompt.rfind(OPEN) > prompt.rfind(CLOSE)


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ThinkingSplitter:
    """push(text) -> [(kind, text)] with kind "reasoning" or "answer"; flush() at the end.

    The reasoning loses the newline after `<think>` and before `</think>`, the answer its leading
    whitespace, as the MiniCPM5 template strips them when it renders an earlier turn.
    """

    def __init__(self, inside: bool):
        self.state = "reasoning" if inside else "start"
        self.buf = ""
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self.saw_thinking = inside

    def push(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "start":  # the answer, unless the model opens <think> first
                head = self.buf.lstrip()
                if head.startswith(OPEN):
                    self.buf, self.state, self.saw_thinking = head[len(OPEN):], "reasoning", True
                    continue
                if not head or OPEN.startswith(head):
                    return out
                self.state = "answer"
                continue
            if self.state == "reasoning":
                end = self.buf.find(CLOSE)
                if end >= 0:
                    self._emit(out, "reasoning", self.buf[:end].rstrip("\n"))
                    self.buf, self.state = self.buf[end + len(CLOSE):], "answer"
                    continue
                # hold back what may be the start of </think>, and a trailing newline that may precede it
                keep = _partial_suffix(self.buf, CLOSE)
                body = self.buf[:len(self.buf) - keep]
                while body.endswith("\n"):
                    body, keep = body[:-1], keep + 1
                self._emit(out, "reasoning", body)
                self.buf = self.buf[len(self.buf) - keep:] if keep else ""
                return out
            self._emit(out, "answer", self.buf)
            self.buf = ""
            return out

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        kind = "reasoning" if self.state == "reasoning" else "answer"
        self._emit(out, kind, self.buf if kind == "answer" else self.buf.rstrip("\n"))
        self.buf = ""
        return out

    def _emit(self, out: list, kind: str, text: str) -> None:
        parts = self.reasoning if kind == "reasoning" else self.answer
        if not parts:  # strip where a part starts: "<think>\n" and "</think>\n\n" are layout, not content
            text = text.lstrip("\n") if kind == "reasoning" else text.lstrip()
        if text:
            parts.append(text)
            out.append((kind, text))
