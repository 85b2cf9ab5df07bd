"""A1111's `parameters` text read as A1111 reads it: split into prompt, negative prompt and
settings fields (`parse_a1111`, `A1111Text`), and its sampler and schedule names in pilot's terms
(`a1111_sampler`).

The format alone, with no `pilot generate` argument in it: `pilot.commands._png_params` turns
the fields into `PngSettings` (and re-exports these names), so each stays a short module. The
text is written by `pilot.commands._a1111`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# A1111 sampler label (lower case) -> (pilot sampler, the schedule A1111 >= 1.9 picks for its
# "Automatic" schedule type: the sampler's own default, else the model's timesteps, "Uniform").
A1111_SAMPLERS = {
    "euler a": ("euler_ancestral", "linspace"),
    "euler": ("euler", "linspace"),
    "heun": ("heun", "linspace"),
    "dpm++ 2m": ("dpmpp_2m", "karras"),
    "dpm++ sde": ("dpmpp_sde", "karras"),
    "dpm++ 2m sde": ("dpmpp_2m_sde", "exponential"),
    "ddim": ("ddim", "leading"),
    "lcm": ("lcm", "linspace"),
}
# A1111 schedule type (label or name, lower case) -> pilot schedule. "Uniform" is k-diffusion's
# grid of the model's own timesteps, evenly spaced from the last: pilot's (and diffusers')
# "linspace", interpolated in log-sigma as k-diffusion does.
A1111_SCHEDULES = {"uniform": "linspace", "karras": "karras", "exponential": "exponential"}
_KEY = re.compile(r"\s*(\w[\w \-/]*?)\s*:\s*")


@dataclass(frozen=True)
class A1111Text:
    """A1111's `parameters` text, split as A1111 splits it (`parse_a1111`).

    Attributes:
        prompt: The lines before `Negative prompt:`, each stripped, LoRA tags still in.
        negative_prompt: The lines from `Negative prompt:` on ("" without one).
        fields: The settings line's `Key: value` fields, in order, quoted values unquoted.
    """

    prompt: str
    negative_prompt: str
    fields: dict[str, str]


def parse_a1111(text: str) -> A1111Text:
    """Split A1111's `parameters` text into prompt, negative prompt and settings fields.

    As A1111's own reader: the last line holds the settings if it has at least three `Key: value`
    fields (else it is part of the prompt); the lines before `Negative prompt:` are the prompt,
    those from it on the negative prompt, each stripped. A value A1111 quoted (JSON) is unquoted;
    a JSON object value (`Hashes: {...}`) is kept whole; `Size: 512x768` stays one field.
    """
    *lines, last = text.strip().split("\n")
    fields = _settings_fields(last)
    if len(fields) < 3:
        lines, fields = [*lines, last], {}
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in map(str.strip, lines):
        if negative is None and line.startswith("Negative prompt:"):
            negative = [line.removeprefix("Negative prompt:").strip()]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    return A1111Text("\n".join(prompt), "\n".join(negative or []), fields)


def _settings_fields(line: str) -> dict[str, str]:
    """The `Key: value` fields of a settings line; text that is no field is skipped."""
    decoder, fields, i = json.JSONDecoder(), {}, 0
    while i < len(line):
        match = _KEY.match(line, i)
        if match is None:  # not a field: on to the next comma
            comma = line.find(",", i)
            i = len(line) if comma < 0 else comma + 1
            continue
        key, i = match.group(1), match.end()
        if line.startswith(('"', "{"), i):
            try:
                value, end = decoder.raw_decode(line, i)
            except ValueError:
                pass
            else:
                fields[key] = value if isinstance(value, str) else line[i:end]
                comma = line.find(",", end)
                i = len(line) if comma < 0 else comma + 1
                continue
        comma = line.find(",", i)
        end = len(line) if comma < 0 else comma
        fields[key] = line[i:end].strip()
        i = end + 1
    return fields


def a1111_sampler(label: str, schedule: str | None) -> tuple[str | None, str | None]:
    """pilot's (sampler, schedule) of an A1111 `Sampler` and `Schedule type` (None: no such one
    in pilot), or of pilot's own names, which its A1111 text uses.

    A1111 before 1.9 wrote no `Schedule type`: a ` Karras` / ` Exponential` suffix chose the
    schedule (`DPM++ 2M Karras`), else the sampler took the model's own timesteps ("Uniform",
    pilot's linspace). From 1.9 the schedule is its own field, where "Automatic" is the sampler's
    default (Karras for DPM++ 2M and DPM++ SDE, Exponential for DPM++ 2M SDE). A1111's DDIM
    steps through the model's timesteps spaced `1000 // steps` apart from 1 (pilot's `leading`,
    the same where steps divide 1000), whatever the schedule field says.
    """
    from pilot.diffusion.samplers import SAMPLERS
    from pilot.diffusion.schedules import SCHEDULES

    name = label.strip()
    if name in SAMPLERS:  # pilot's own text (`ddim` is pilot's, `DDIM` A1111's)
        sampler, automatic, suffix = name, None, None
    else:
        name, suffix = _schedule_suffix(name)
        sampler, automatic = A1111_SAMPLERS.get(name.lower(), (None, None))
        if name.lower() == "ddim":
            return sampler, automatic
    if schedule is None:  # A1111 < 1.9 (or pilot's own sampler: its default schedule)
        return sampler, suffix or (automatic and "linspace")
    schedule = schedule.strip()
    if schedule in SCHEDULES:
        return sampler, schedule
    if schedule.lower() == "automatic":
        return sampler, suffix or automatic
    return sampler, A1111_SCHEDULES.get(schedule.lower())


def _schedule_suffix(name: str) -> tuple[str, str | None]:
    """`DPM++ 2M Karras` -> (`DPM++ 2M`, "karras"): A1111's old names with their schedule."""
    for suffix, schedule in A1111_SCHEDULES.items():
        if name.lower().endswith(" " + suffix):
            return name[: -len(suffix) - 1], schedule
    return name, None
