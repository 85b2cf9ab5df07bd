"""Keyframe schedules: Deforum strings, safe expressions, interpolation, prompt schedules."""

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilot.animation.schedules import (
    ScheduleError,
    parse_expression,
    parse_prompt_schedule,
    parse_schedule,
)


def test_deforum_string_linear_step_smooth():
    text = "0:(0.65), 24:(0.4)"
    linear = parse_schedule(text)
    assert linear(0) == 0.65 and linear(24) == 0.4 and linear(100) == 0.4
    assert linear(12) == pytest.approx(0.525)
    assert parse_schedule(text, "step")(23.9) == 0.65
    smooth = parse_schedule(text, "smooth")
    assert smooth(12) == pytest.approx(0.525) and smooth(3) > linear(3)  # eased: flat at keys


def test_expressions_of_t_and_bare_values():
    s = parse_schedule("0:(0.5 + 0.1*sin(t/4)), 10:(clamp(t/100, 0, 0.2))")
    assert s(0) == pytest.approx(0.5)
    assert s(5) == pytest.approx(0.5 * (0.5 + 0.1 * math.sin(5 / 4)) + 0.5 * 0.05)
    assert parse_schedule("0.3")(7) == 0.3
    assert parse_schedule("2 ** t")(3) == 8.0
    assert parse_schedule("0: (max(1, 2)) , 5:(-pi)")(5) == -math.pi


@pytest.mark.parametrize(
    "text, position, message",
    [
        ("0:(0.65), 24:(0.4 +)", 19, "invalid expression"),
        ("0:(0.65), x:(0.4)", 10, "keyframe 'x' is not a number"),
        ("0:(0.65), 24:0.4", 13, "in parentheses"),
        ("0:(0.65),, 24:(0.4)", 9, "empty keyframe"),
        ("0:(0.65), 24:(0.4", 13, "unclosed '('"),
        ("0:(0.6)), 1:(1)", 7, "unbalanced ')'"),
        ("4:(1), 2:(0)", 6, "keyframe 2 is not after 4"),
        ("0:(__import__('os').system('x'))", 3, "unknown function"),
        ("0:(t.__class__)", 3, "Attribute is not allowed"),
        ("0:(1), 5:(0.2 + foo)", 16, "unknown name 'foo'"),
        ("0:('a')", 3, "only numbers"),
        ("0:(lambda: 1)", 3, "Lambda is not allowed"),
    ],
)
def test_errors_point_at_the_character(text, position, message):
    with pytest.raises(ScheduleError, match=re.escape(message)) as info:
        parse_schedule(text)
    assert info.value.position == position
    caret_line = str(info.value).splitlines()[-1]
    assert caret_line.index("^") - 2 == position  # two spaces of indent


def test_evaluation_errors_name_the_keyframe():
    with pytest.raises(ValueError, match="keyframe 0 value '1 / t' fails at t=0"):
        parse_schedule("0:(1 / t)")(0)
    with pytest.raises(ValueError, match="fails at t=2"):
        parse_schedule("10.0 ** 10 ** 10")(2)  # float overflow, not a hang


@st.composite
def keyframes(draw):
    frames = sorted(draw(st.sets(st.integers(0, 500), min_size=1, max_size=8)))
    values = draw(st.lists(st.floats(-1e3, 1e3), min_size=len(frames), max_size=len(frames)))
    return frames, values


def format_schedule(frames, values) -> str:
    return ", ".join(f"{f}:({v!r})" for f, v in zip(frames, values, strict=True))


@settings(max_examples=60, deadline=None)
@given(keyframes(), st.sampled_from(["linear", "step", "smooth"]))
def test_keyframe_values_round_trip(keys, interpolation):
    frames, values = keys
    s = parse_schedule(format_schedule(frames, values), interpolation)
    for f, v in zip(frames, values, strict=True):
        assert s(f) == pytest.approx(v, abs=1e-9)
    assert s(frames[-1] + 1000) == pytest.approx(values[-1])


@settings(max_examples=60, deadline=None)
@given(keyframes(), st.floats(0, 1), st.sampled_from(["linear", "step", "smooth"]))
def test_between_keys_values_stay_between(keys, fraction, interpolation):
    frames, values = keys
    if len(frames) < 2:
        return
    s = parse_schedule(format_schedule(frames, values), interpolation)
    a, b = frames[0], frames[1]
    v = s(a + fraction * (b - a))
    lo, hi = min(values[:2]), max(values[:2])
    assert lo - 1e-9 <= v <= hi + 1e-9
    if interpolation == "step" and a + fraction * (b - a) < b:
        assert v == values[0]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789:(),.+-*/ tesinpa_x'", max_size=30))
def test_any_text_parses_or_raises_a_schedule_error(text):
    try:
        s = parse_schedule(text)
    except ScheduleError as e:
        assert 0 <= e.position <= len(text)
        return
    try:
        s(3.0)
    except ValueError as e:  # evaluation errors (division by zero...) are ValueErrors too
        assert "fails at t=3" in str(e) or "not finite" in str(e)


@settings(max_examples=40, deadline=None)
@given(st.floats(-100, 100), st.floats(-100, 100))
def test_expression_matches_python_arithmetic(a, b):
    expr = parse_expression(f"({a!r}) * t - ({b!r}) / 2")
    assert expr(3.0) == pytest.approx(a * 3.0 - b / 2)


def test_prompt_schedules():
    s = parse_prompt_schedule("0: a red corridor, fog | 24: a blue cave")
    assert s.at(0) == ("a red corridor, fog", "a red corridor, fog", 0.0)
    assert s.at(6) == ("a red corridor, fog", "a blue cave", 0.25)
    assert parse_prompt_schedule('{"0": "a", "10": "b"}', "step").at(5) == ("a", "b", 0.0)
    assert parse_prompt_schedule("style: ink, a corridor").prompts == ("style: ink, a corridor",)
    with pytest.raises(ScheduleError, match="expected 'frame: prompt'") as info:
        parse_prompt_schedule("0: a | b")
    assert info.value.position == 7
    with pytest.raises(ScheduleError, match="keyframe 2 is not after 5"):
        parse_prompt_schedule("5: a | 2: b")


@pytest.mark.parametrize(
    "text, message, position",
    [
        ('{"0": "red", "nan": "blue"}', "keyframe nan must be a frame >= 0", 14),
        ('{"0": "red", "-3": "blue"}', "keyframe -3 must be a frame >= 0", 14),
        ('{"0": "red", "inf": "blue"}', "keyframe inf must be a frame >= 0", 14),
        ('{"0": "red", "x": "blue"}', "keyframe 'x' is not a number", 14),
        ('{"0": null}', "the prompt of keyframe '0' must be a string, not null", 2),
        ('{"0": "a", "2": ["b"]}', r"keyframe '2' must be a string, not \[\"b\"\]", 12),
        ('{"0": "a", "0.0": "b"}', "keyframe 0 appears twice", 12),
        ('{"0": "a", "1": }', "invalid JSON", 16),
    ],
)
def test_json_prompt_schedules_are_checked_like_text(text, message, position):
    with pytest.raises(ScheduleError, match=message) as info:
        parse_prompt_schedule(text)
    assert info.value.position == position
    assert parse_prompt_schedule('{"10": "b", "0.5": "a"}').frames == (0.5, 10.0)
