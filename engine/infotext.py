"""A1111's ``parameters`` infotext: build it so our PNGs paste back into A1111, and parse it back.

Layout (A1111): the prompt; a ``Negative prompt:`` line when there is one; then one line of
``Key: value`` pairs joined by ", ". Values holding a comma, colon or newline are JSON-quoted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

NEGATIVE_PREFIX = "Negative prompt: "
_PAIR = re.compile(r'\s*([\w][\w \-/+()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: str) -> str:
    if any(c in value for c in ',:\n"'):
        return json.dumps(value, ensure_ascii=False)
    return value


def format_value(value: object) -> str:
    """Numbers as A1111 prints them (7.0 → 7), strings quoted when needed."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(round(value, 6))
    return _quote(str(value))


def build_infotext(prompt: str, negative_prompt: str, params: dict[str, object]) -> str:
    """The text of the PNG ``parameters`` chunk. ``params`` is ordered as the last line should read;
    entries whose value is None are left out."""
    line = ", ".join(f"{k}: {format_value(v)}" for k, v in params.items() if v is not None)
    parts = [prompt]
    if negative_prompt:
        parts.append(NEGATIVE_PREFIX + negative_prompt)
    parts.append(line)
    return "\n".join(parts)


@dataclass
class Infotext:
    prompt: str
    negative_prompt: str
    params: dict[str, str] = field(default_factory=dict)


def parse_infotext(text: str) -> Infotext:
    """Split infotext back into prompt, negative prompt and the key/value parameters (values as text)."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    params: dict[str, str] = {}
    if len(_PAIR.findall(last)) >= 3:
        lines.pop()
        for key, value in _PAIR.findall(last):
            value = value.strip()
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = json.loads(value)
            params[key.strip()] = value
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX) and target is prompt_lines:
            target = negative_lines
            line = line[len(NEGATIVE_PREFIX):]
        target.append(line)
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), params)
