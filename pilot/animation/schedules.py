"""Keyframe schedules: Deforum-style `"0:(0.65), 24:(0.4)"` strings and keyframed prompts.

A schedule is a comma-separated list of `frame:(value)` keyframes. Values are numbers or math
expressions of the frame number `t`, e.g. `"0:(0.5 + 0.1 * sin(t / 4)), 48:(0.3)"`. At frame t
each of the two surrounding keyframes is evaluated at t and the two values are interpolated:

- `linear`: straight lines between keyframes;
- `step`: hold each keyframe's value until the next keyframe;
- `smooth`: smoothstep easing `3w^2 - 2w^3` (flat at every keyframe, no overshoot).

Before the first keyframe the first value holds, after the last the last one. A bare number
(`"0.4"`) or expression (`"0.4 + 0.01 * t"`) is one keyframe at frame 0.

Expressions are parsed with `ast` and walked by a small evaluator that knows only numbers, `t`,
`pi`, `e`, `+ - * / // % **`, unary minus and the functions in `FUNCTIONS`: nothing is ever
passed to `eval`, so a schedule string cannot run code. Arithmetic is in floats, so `10**10**10`
overflows with an error instead of hanging. Syntax errors raise `ScheduleError` with the string
and a caret under the offending character.

Prompt schedules key prompts by frame, `"0: a red corridor | 24: a blue cave"` (or a JSON
object `{"0": "...", "24": "..."}`, Deforum's form: string prompts, frames checked as in the
text form); between keys the text embeddings are interpolated (`PromptSchedule.at(t)` gives the
two prompts and the weight of the second).
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Interpolation = Literal["linear", "step", "smooth"]
INTERPOLATIONS = ("linear", "step", "smooth")

FUNCTIONS: dict[str, Callable[..., float]] = {
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "abs": abs,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "floor": math.floor,
    "ceil": math.ceil,
    "min": min,
    "max": max,
    "round": round,
    "clamp": lambda x, lo, hi: min(max(x, lo), hi),
}
CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class ScheduleError(ValueError):
    """A schedule string that does not parse or evaluate; the message points at the character.

    Attributes:
        text: The whole schedule string.
        position: 0-based index of the offending character in `text`.
    """

    def __init__(self, message: str, text: str, position: int) -> None:
        self.text, self.position = text, max(0, min(position, len(text)))
        caret = " " * self.position + "^"
        super().__init__(f"{message} at character {self.position + 1}:\n  {text}\n  {caret}")


@dataclass(frozen=True)
class Expression:
    """A validated math expression of `t`: its source text and its parsed tree."""

    source: str
    tree: ast.expr

    def __call__(self, t: float) -> float:
        """Value at frame `t`; ArithmeticError/ValueError on overflow, division by zero..."""
        return float(_evaluate(self.tree, float(t)))


def parse_expression(source: str, *, text: str | None = None, offset: int = 0) -> Expression:
    """Parse a math expression of `t` with the whitelist of the module docstring.

    Args:
        source: The expression, e.g. `"0.4 + 0.1 * sin(t / 8)"`.
        text, offset: The schedule string the expression sits in and its start there, so errors
            point into the whole string.
    """
    text = source if text is None else text
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as e:
        lead = len(source) - len(source.lstrip())
        at_end = not e.offset or e.lineno != 1  # Python reports offset 0 at end of input
        column = lead + (len(source.strip()) if at_end else e.offset - 1)
        raise ScheduleError(f"invalid expression ({e.msg})", text, offset + column) from None
    lead = len(source) - len(source.lstrip())
    _check(tree, text, offset + lead)
    return Expression(source.strip(), tree)


def _check(node: ast.AST, text: str, offset: int) -> None:
    """Raise ScheduleError at the first node outside the whitelist."""
    where = offset + getattr(node, "col_offset", 0)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ScheduleError(f"only numbers are allowed, not {node.value!r}", text, where)
    elif isinstance(node, ast.Name):
        if node.id != "t" and node.id not in CONSTANTS:
            allowed = ", ".join(["t", *CONSTANTS])
            raise ScheduleError(f"unknown name {node.id!r} (allowed: {allowed})", text, where)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, text, offset)
        _check(node.right, text, offset)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(node.operand, text, offset)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS or node.keywords:
            names = ", ".join(FUNCTIONS)
            raise ScheduleError(f"unknown function (allowed: {names})", text, where)
        for arg in node.args:
            _check(arg, text, offset)
    else:
        raise ScheduleError(f"{type(node).__name__} is not allowed in a schedule", text, where)


def _evaluate(node: ast.expr, t: float) -> float:
    """Walk a checked tree in float arithmetic."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return t if node.id == "t" else CONSTANTS[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, t), _evaluate(node.right, t))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, t))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return FUNCTIONS[node.func.id](*(_evaluate(a, t) for a in node.args))


def ease(w: float, interpolation: Interpolation) -> float:
    """Weight of the later keyframe at fraction `w` in [0, 1] of the way between two keys."""
    if interpolation == "linear":
        return w
    if interpolation == "step":
        return 1.0 if w >= 1.0 else 0.0
    if interpolation == "smooth":
        return w * w * (3 - 2 * w)
    raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")


def bracket(
    frames: tuple[float, ...], t: float, interpolation: Interpolation
) -> tuple[int, int, float]:
    """Indices `(a, b)` of the keyframes around `t` and the eased weight of `b`."""
    if t <= frames[0]:
        return 0, 0, 0.0
    if t >= frames[-1]:
        return len(frames) - 1, len(frames) - 1, 0.0
    b = next(i for i, f in enumerate(frames) if f > t)
    a = b - 1
    return a, b, ease((t - frames[a]) / (frames[b] - frames[a]), interpolation)


@dataclass(frozen=True)
class Schedule:
    """A keyframed value: `schedule(t)` is its value at frame t (module docstring).

    Attributes:
        frames: Keyframe frame numbers, strictly increasing.
        values: One expression of `t` per keyframe.
        interpolation: How values blend between keyframes.
        text: The string it was parsed from (for settings files and errors).
    """

    frames: tuple[float, ...]
    values: tuple[Expression, ...]
    interpolation: Interpolation = "linear"
    text: str = ""

    def __post_init__(self) -> None:
        ease(0.5, self.interpolation)  # raises naming the valid choices
        if not self.frames or len(self.frames) != len(self.values):
            raise ValueError(f"{len(self.frames)} keyframes for {len(self.values)} values")
        if any(b <= a for a, b in zip(self.frames, self.frames[1:], strict=False)):
            raise ValueError(f"keyframes {self.frames} must be strictly increasing")

    @classmethod
    def constant(cls, value: float) -> Schedule:
        """One value for every frame."""
        return parse_schedule(repr(float(value)))

    def __call__(self, t: float) -> float:
        """Value at frame `t`; ValueError naming the keyframe if an expression fails there."""
        a, b, w = bracket(self.frames, t, self.interpolation)
        va = self._value(a, t)
        return va if w == 0.0 else va + w * (self._value(b, t) - va)

    def _value(self, i: int, t: float) -> float:
        try:
            value = self.values[i](t)
        except (ArithmeticError, ValueError, TypeError) as e:
            raise ValueError(
                f"schedule {self.text!r}: keyframe {self.frames[i]:g} value "
                f"{self.values[i].source!r} fails at t={t:g} ({e})"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"schedule {self.text!r}: value {value} at t={t:g} is not finite")
        return value


def _split_top_level(text: str, sep: str) -> list[tuple[int, str]]:
    """Split at `sep` outside parentheses: [(start index, piece)]."""
    pieces, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ScheduleError("unbalanced ')'", text, i)
        elif ch == sep and depth == 0:
            pieces.append((start, text[start:i]))
            start = i + 1
    if depth > 0:
        raise ScheduleError("unclosed '('", text, text.rfind("("))
    pieces.append((start, text[start:]))
    return pieces


def _parse_frame(piece: str, text: str, start: int) -> float:
    lead = len(piece) - len(piece.lstrip())
    try:
        frame = float(piece.strip())
    except ValueError:
        raise ScheduleError(
            f"keyframe {piece.strip()!r} is not a number", text, start + lead
        ) from None
    if not math.isfinite(frame) or frame < 0:
        raise ScheduleError(f"keyframe {piece.strip()} must be a frame >= 0", text, start + lead)
    return frame


def parse_schedule(text: str | float, interpolation: Interpolation = "linear") -> Schedule:
    """Parse `"0:(0.65), 24:(0.4)"`, or one bare value/expression, into a `Schedule`; a
    number stands for a constant schedule (`0.5` is `"0.5"`).

    Raises:
        ScheduleError: malformed text; the message shows the string with a caret at the fault.
        TypeError: `text` is neither a string nor a number.
    """
    text = schedule_text(text)
    if not text.strip():
        raise ScheduleError("empty schedule", text, 0)
    if ":" not in text:
        return Schedule((0.0,), (parse_expression(text, text=text),), interpolation, text)
    frames, values = [], []
    for start, piece in _split_top_level(text, ","):
        if not piece.strip():
            raise ScheduleError("empty keyframe (stray comma?)", text, start)
        colon = piece.find(":")
        if colon < 0:
            raise ScheduleError(
                "expected 'frame:(value)'", text, start + len(piece) - len(piece.lstrip())
            )
        frame = _parse_frame(piece[:colon], text, start)
        body, at = piece[colon + 1 :], start + colon + 1
        lead = len(body) - len(body.lstrip())
        stripped = body.strip()
        if not (stripped.startswith("(") and stripped.endswith(")")):
            raise ScheduleError(
                "a keyframe value goes in parentheses: 'frame:(value)'", text, at + lead
            )
        if frames and frame <= frames[-1]:
            raise ScheduleError(f"keyframe {frame:g} is not after {frames[-1]:g}", text, start)
        frames.append(frame)
        values.append(parse_expression(stripped[1:-1], text=text, offset=at + lead + 1))
    return Schedule(tuple(frames), tuple(values), interpolation, text)


@dataclass(frozen=True)
class PromptSchedule:
    """Prompts keyed by frame; text embeddings are interpolated between keys.

    Attributes:
        frames: Keyframe numbers, strictly increasing.
        prompts: One prompt per keyframe.
        interpolation: Easing of the embedding weight between keys.
    """

    frames: tuple[float, ...]
    prompts: tuple[str, ...]
    interpolation: Interpolation = "linear"

    def __post_init__(self) -> None:
        ease(0.5, self.interpolation)
        if not self.frames or len(self.frames) != len(self.prompts):
            raise ValueError(f"{len(self.frames)} keyframes for {len(self.prompts)} prompts")
        if any(b <= a for a, b in zip(self.frames, self.frames[1:], strict=False)):
            raise ValueError(f"prompt keyframes {self.frames} must be strictly increasing")

    def at(self, t: float) -> tuple[str, str, float]:
        """`(prompt_a, prompt_b, w)`: frame t's embedding is `lerp(E(a), E(b), w)`."""
        a, b, w = bracket(self.frames, t, self.interpolation)
        return self.prompts[a], self.prompts[b], w


def schedule_text(value: str | float, name: str = "schedule") -> str:
    """A schedule's text: strings as they are, a number as its constant schedule (`str`);
    TypeError naming `name` for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} {value!r}: expected a schedule string or a number")
    return value


def parse_prompt_schedule(
    text: str | Mapping[float, str], interpolation: Interpolation = "linear"
) -> PromptSchedule:
    """Parse `"0: a red corridor | 24: a blue cave"`, a JSON object, or one plain prompt; or
    take a dict `{0: "a red corridor", 24: "a blue cave"}` (checked as the JSON form is).

    A piece only counts as keyed when it starts with `<number>:`, so a plain prompt may hold
    colons elsewhere ("style: ink").
    """
    if isinstance(text, Mapping):
        text = json.dumps({str(frame): prompt for frame, prompt in text.items()})
    if not isinstance(text, str):
        raise TypeError(f"prompt schedule {text!r}: expected a string or a {{frame: prompt}} dict")
    if text.strip().startswith("{"):
        items = _parse_json_prompts(text)
    else:
        items = []
        for start, piece in _split_prompts(text):
            head, colon, prompt = piece.partition(":")
            if not colon or not _is_number(head):
                if len(text.split("|")) > 1:
                    lead = len(piece) - len(piece.lstrip())
                    raise ScheduleError("expected 'frame: prompt'", text, start + lead)
                return PromptSchedule((0.0,), (text.strip(),), interpolation)
            frame = _parse_frame(head, text, start)
            if items and frame <= items[-1][0]:
                raise ScheduleError(
                    f"keyframe {frame:g} is not after {items[-1][0]:g}", text, start
                )
            items.append((frame, prompt.strip()))
    if not items:
        raise ScheduleError("empty prompt schedule", text, 0)
    frames, prompts = zip(*items, strict=True)
    return PromptSchedule(tuple(frames), tuple(prompts), interpolation)


def _parse_json_prompts(text: str) -> list[tuple[float, str]]:
    """`(frame, prompt)` pairs of a JSON object `{"0": "...", "24": "..."}`, sorted by frame.

    Keys are checked like the text form's (numbers, finite, >= 0, each frame once) and values
    must be strings; errors point at the key in `text`.
    """
    lead = len(text) - len(text.lstrip())
    try:
        keyed = json.loads(text.strip())
    except json.JSONDecodeError as e:
        raise ScheduleError(f"invalid JSON ({e.msg})", text, lead + e.pos) from None
    items = []
    for key, prompt in keyed.items():
        at = text.find(json.dumps(key)) + 1  # inside the key's quotes (0 if not found)
        frame = _parse_frame(key, text, at)
        if not isinstance(prompt, str):
            got = json.dumps(prompt)
            raise ScheduleError(
                f"the prompt of keyframe {key!r} must be a string, not {got}", text, at
            )
        if any(frame == f for f, _ in items):
            raise ScheduleError(f"keyframe {frame:g} appears twice", text, at)
        items.append((frame, prompt))
    return sorted(items)


def _split_prompts(text: str) -> list[tuple[int, str]]:
    pieces, start = [], 0
    for piece in text.split("|"):
        pieces.append((start, piece))
        start += len(piece) + 1
    return pieces


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
