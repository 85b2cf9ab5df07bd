"""One-line errors for bad `pilot train` settings, naming where in the config they are."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Sequence
from difflib import get_close_matches
from typing import Any


def settings_error(error: argparse.ArgumentError, parser: Any, args: Sequence[str]) -> ValueError:
    """One line for a bad setting (jsonargparse prints its 100-line usage above it): the
    message, the `--config` file(s) when the key came from one, the closest known setting for a
    misspelt key, and where the settings are listed."""
    message = " ".join(str(error).split())
    keys = re.findall(r"[\"']([A-Za-z_]\w*(?:\.\w+)+)[\"']|--(\w+(?:\.\w+)+)", message)
    key = next((k for pair in keys for k in pair if k), None)  # e.g. "model.generator.norm"
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    given = any(a == f"--{key}" or a.startswith(f"--{key}=") for a in args)
    if key is not None and configs and not given:
        message = f"{', '.join(configs)}: {message}"
    known = [a.dest for a in getattr(parser, "_actions", ()) if "." in a.dest]
    if key is not None and key not in known and (close := get_close_matches(key, known, 1)):
        message += f" (did you mean {close[0]}?)"
    prog = getattr(parser, "prog", "pilot train SYSTEM").split(" [options]")[0]
    return ValueError(f"{message}; `{prog} --help` lists the settings")


def config_sections(sections: dict[type, str]) -> dict[type, str]:
    """`sections` (class -> config section, e.g. the system -> "model") plus the config
    dataclasses their `__init__` takes (`Pix2PixConfig` -> "model.generator")."""
    found = dict(sections)
    for cls, name in sections.items():
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # noqa: BLE001 (a hint that does not resolve: no sub-sections)
            continue
        for arg, hint in hints.items():
            if dataclasses.is_dataclass(hint) and isinstance(hint, type):
                found.setdefault(hint, f"{name}.{arg}")
    return found


def section_error(error: Exception, sections: dict[type, str]) -> Exception:
    """`error` raised while the config's classes were made, as a ValueError prefixed by the
    config section of the innermost of `config_sections(sections)` that raised it
    (`model.generator.image_size=48 must be a power of two in 64..512`, `timelapse: need...`);
    else `error`."""
    known = config_sections(sections)
    section, tb = None, error.__traceback__
    while tb is not None:
        owner = type(tb.tb_frame.f_locals.get("self"))
        section = known.get(owner, section)
        tb = tb.tb_next
    message = str(error)
    if section is None or message.startswith(f"{section}."):
        return error
    if re.match(r"[A-Za-z_][\w.]*=", message):  # "image_size=48 must..."
        return ValueError(f"{section}.{message}")
    return ValueError(f"{section}: {message}")
