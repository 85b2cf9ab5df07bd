"""Parse a command line the way its program would, without running it: `pilot ...` through
`pilot.cli.build_parser`, `python -m module ...` by running the module until its `parse_args`.
Used to check the commands the README and `experiments/bench/gpu.sh` show."""

import argparse
import re
import runpy
import shlex
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path

import pytest

from pilot.cli import build_parser

PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # MODEL, CKPT, B, LO: a value the reader picks


class Parsed(Exception):
    """Raised instead of running a command once its arguments parsed."""


class Rejected(Exception):
    """argparse refused a command's arguments (its message)."""


def lenient(parser: argparse.ArgumentParser) -> None:
    """Make every argument of `parser` and its subcommands optional (the README names
    commands in prose without their required arguments) and let typed arguments take a
    placeholder (`--batch B`)."""
    for action in parser._actions:
        action.required = False
        if callable(action.type) and not getattr(action.type, "lenient", False):
            action.type = placeholder_or(action.type)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                lenient(sub)
    for group in parser._mutually_exclusive_groups:
        group.required = False


def placeholder_or(convert):
    """`convert`, except that a placeholder stays as it is."""

    def value(text: str):
        return text if PLACEHOLDER.match(text) else convert(text)

    value.lenient = True
    value.__name__ = getattr(convert, "__name__", "value")  # argparse's "invalid int value"
    return value


def strict_argparse(monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse that raises `Rejected` on a bad argument and `Parsed` once parsing succeeds,
    so a module's `main` stops before it does any work."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        lenient(self)
        raise Parsed(parse_args(self, args, namespace))

    def error(self, message):
        raise Rejected(f"{self.prog}: {message}")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(argparse.ArgumentParser, "error", error)


def parse(argv: list[str], monkeypatch) -> None:
    """Parse one command line (argv) the way its program would; raise `Rejected` if it
    does not. Needs `strict_argparse`."""
    if argv[0] == "pilot":
        with pytest.raises(Parsed):
            build_parser().parse_args(argv[1:])
        return
    module = argv[2]
    if module == "pytest" or find_spec(module) is None:  # pytest: its paths are checked
        assert module == "pytest", f"no module {module}"
        return
    source = Path(find_spec(module).origin).read_text()
    if "parse_args" not in source and "__main__" in source:  # an entry point without options
        assert len(argv) == 3, f"{module} takes no arguments: {argv}"
        return
    if "parse_args" not in source:  # a package: its __main__ module parses
        module += ".__main__"
    monkeypatch.setattr(sys, "argv", [module, *argv[3:]])
    with pytest.raises(Parsed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
        runpy.run_module(module, run_name="__main__", alter_sys=False)


def unparsable(argvs: list[list[str]], monkeypatch) -> list[str]:
    """Each command of `argvs` that does not parse, with argparse's message (for an assert);
    sets `strict_argparse` up itself."""
    strict_argparse(monkeypatch)
    bad = []
    for argv in argvs:
        try:
            parse(argv, monkeypatch)
        except (Rejected, AssertionError, pytest.fail.Exception) as e:
            bad.append(f"{shlex.join(argv)}\n    {e}")
    return bad
