"""The README stays true to the code: every `pilot ...` and `python -m ...` command it shows
(code blocks and inline spans) parses with today's options, every repository path it names
(commands, links, images) exists, the imports of its Python blocks work and every dotted name
of the project it mentions (`pilot.diffusion.pipeline.generate`, `train.metrics.checkerboard`)
resolves."""

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from tests.cli_parse import Rejected, parse, strict_argparse, unparsable

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Repository paths a command or link may name (placeholders like CKPT or runs/... are outputs).
REPO_PATH = re.compile(r"^(?:\./)?((?:experiments|tests|pilot|train|\.ci)/[\w./-]*\w)$")


def shell_lines(text: str) -> list[str]:
    """The lines of the README's bash code blocks, `\\` continuations joined."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside code blocks (they may wrap across lines)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def commands(text: str) -> list[list[str]]:
    """Every `pilot` / `python -m` command of the README as argv, without environment
    assignments, `time`, comments or `&&` chains; `a|b` alternatives expand, `[--opt X]`
    optional parts are kept, lines with `...` placeholders are left out."""
    found = []
    for line in [*shell_lines(text), *inline_spans(text)]:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # prose with an apostrophe, not a command
            continue
        for part in " ".join(map(shlex.quote, tokens)).split(" '&&' "):
            argv = [unwrap(t) for t in shlex.split(part)]
            while argv and (argv[0] in ("time", "") or re.match(r"^[A-Z_]+=", argv[0])):
                argv.pop(0)
            is_command = argv[:1] == ["pilot"] or argv[:2] == ["python", "-m"]
            if is_command and not any("..." in t for t in argv):
                found += expand(argv)
    return found


def unwrap(token: str) -> str:
    """A token without the brackets of `[--flag]`, `[--opt X]` or `(cmd ...)` around it; those
    inside, as in a schedule `0:(1.0)`, stay."""
    for opening, closing in ("[]", "()"):
        if token.startswith(opening) and token.endswith(closing):  # [--cross]
            token = token[1:-1]
        while token.startswith(opening) and token.count(opening) > token.count(closing):
            token = token[1:]
        while token.endswith(closing) and token.count(closing) > token.count(opening):
            token = token[:-1]
    return token


def expand(argv: list[str]) -> list[list[str]]:
    """One argv per alternative of the first `a|b|c` token (words only: a prompt's `|` stays)."""
    for i, token in enumerate(argv):
        if re.fullmatch(r"[\w-]+(?:\|[\w-]+)+", token):
            return [
                cmd for alt in token.split("|") for cmd in expand([*argv[:i], alt, *argv[i + 1 :]])
            ]
    return [argv]


def named_paths(text: str, argvs: list[list[str]]) -> set[str]:
    """Repository paths named by the commands, inline code spans, links and images."""
    tokens = [t.split("=", 1)[-1] for argv in argvs for t in argv]
    tokens += [t.strip(",;:") for span in inline_spans(text) for t in span.split()]
    tokens += re.findall(r"\]\(([^)#\s]+)", text)
    return {m.group(1) for t in tokens if (m := REPO_PATH.match(t))}


def python_blocks(text: str) -> list[str]:
    """The README's Python code blocks."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def broken_imports(text: str) -> list[str]:
    """The import statements of the Python blocks that fail, each with its error."""
    bad = []
    for block in python_blocks(text):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                statement = ast.unparse(node)
                try:
                    exec(statement, {})
                except ImportError as e:
                    bad.append(f"{statement}: {e}")
    return bad


# A project name like `pilot.nn.norms.SPLIT_MIN_ELEMENTS`; not a file name (`train.sh`).
DOTTED = re.compile(
    r"(?<![\w/.-])((?:pilot|train|experiments)(?:\.(?!(?:sh|py|yaml|json)\b)[A-Za-z_]\w*)+)"
)


def unresolved_names(text: str) -> list[str]:
    """The dotted project names of the README that name no module or attribute."""
    bad = []
    for name in sorted(set(DOTTED.findall(text))):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            bad.append(name)
    return bad


def test_readme_commands_are_found():
    """The extraction sees the README's commands, wrapped inline spans included."""
    argvs = commands(README.read_text())
    assert ["pilot", "demo"] in argvs
    assert any(argv[:3] == ["python", "-m", "experiments.bench.vae"] for argv in argvs)
    assert len(argvs) > 80
    text = (
        "see `python -m experiments.bench.unet --size\n256 --threads 2` and `A=1 time pilot x|y -q`"
        ' and `pilot animate --prompt "0: a | 9: b"`'
        " and `pilot demo [--out DIR] [--json] --cfg 0:(1.0)`"
    )
    assert commands(text) == [
        ["python", "-m", "experiments.bench.unet", "--size", "256", "--threads", "2"],
        ["pilot", "x", "-q"],
        ["pilot", "y", "-q"],
        ["pilot", "animate", "--prompt", "0: a | 9: b"],
        ["pilot", "demo", "--out", "DIR", "--json", "--cfg", "0:(1.0)"],
    ]


def test_readme_commands_parse(monkeypatch):
    bad = unparsable(commands(README.read_text()), monkeypatch)
    assert not bad, "README commands that no longer parse:\n" + "\n".join(bad)


def test_readme_paths_exist():
    text = README.read_text()
    missing = sorted(p for p in named_paths(text, commands(text)) if not (ROOT / p).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_readme_python_imports_work():
    assert len(python_blocks(README.read_text())) >= 4
    bad = broken_imports(README.read_text())
    assert not bad, "README imports that fail:\n" + "\n".join(bad)


def test_readme_names_resolve():
    text = README.read_text()
    assert "pilot.diffusion.pipeline.generate" in DOTTED.findall(text)
    bad = unresolved_names(text)
    assert not bad, f"README.md names what the code does not have: {bad}"


def test_a_stale_name_is_caught():
    text = "`pilot.diffusion.speed.optimize` and `pilot.diffusion.speed.optimise`, train.sh"
    assert unresolved_names(text) == ["pilot.diffusion.speed.optimise"]
    block = "```python\nfrom pilot.diffusion import SAMPLERS, SAMPLERZ\n```\n"
    assert len(broken_imports(block)) == 1


def test_a_stale_option_is_caught(monkeypatch):
    strict_argparse(monkeypatch)
    with pytest.raises(Rejected, match="--no-such-flag"):
        parse(["pilot", "demo", "--no-such-flag"], monkeypatch)
    with pytest.raises(Rejected, match="invalid choice"):
        parse(["python", "-m", "experiments.bench.unet", "--preset", "sd99"], monkeypatch)
    with pytest.raises(Rejected, match="invalid int value: 'b'"):
        parse(["pilot", "demo", "--batch", "b"], monkeypatch)
    parse(["pilot", "animate", "--preview-decoder", "FOLDER"], monkeypatch)  # a fragment is fine
    parse(["pilot", "demo", "--batch", "B"], monkeypatch)  # a placeholder is fine
