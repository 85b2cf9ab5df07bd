"""The `pilot` command.

Each subcommand is a small function taking parsed arguments; `build_parser` wires them, with the
groups that live in `pilot/commands/` (one module per group, each with `register(sub)`). Heavy
imports (torch, models) happen inside the subcommands so `pilot --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
from collections.abc import Callable, Sequence


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions and the compute devices torch can see."""
    import torch

    import pilot

    info = {
        "pilot": pilot.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Load a model (folder, single file or cached repo id), or read a LoRA, embedding or VAE,
    and print what it is; of a PNG, the generation parameters it holds."""
    from pilot.commands._inspect import describe_model

    print(json.dumps(describe_model(args.path), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `pilot` command."""
    parser = argparse.ArgumentParser(
        prog="pilot",
        description="Diffusion Pilot: direct image generators frame by frame.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print versions and devices")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "inspect",
        help="describe a Stable Diffusion model, a ControlNet, a GAN checkpoint, a LoRA, a "
        "textual inversion embedding or a VAE; print a PNG's generation parameters",
    )
    p.add_argument("path", help="folder, single .safetensors/.ckpt/.pt file, HF repo id or PNG")
    p.set_defaults(func=cmd_inspect)

    import pilot.commands

    for module in pkgutil.iter_modules(pilot.commands.__path__):
        if not module.name.startswith("_"):  # `_name`: a command's helpers, not a command
            importlib.import_module(f"pilot.commands.{module.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pilot` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if "argv" in vars(args):  # a command that tells given options from defaults (`--from`)
        args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    resumes = getattr(args, "resumes", False)  # a command's `set_defaults(resumes=...)`
    resumes = resumes(args) if callable(resumes) else resumes
    return report_errors(f"pilot {args.command}", lambda: args.func(args), resumes=resumes)


def report_errors(prog: str, command: Callable[[], int], *, resumes: bool = False) -> int:
    """Run `command`; a FileNotFoundError or ValueError (a WeightsError is one) becomes the one
    line `<prog>: error: <message>` on stderr and exit status 2, with no traceback.

    Ctrl-C (a KeyboardInterrupt that reaches here, once the command's `with` blocks have closed
    what it was writing) becomes `<prog>: interrupted` (and, when the command `resumes`, how to
    resume) and the shell's status for SIGINT, 130. Signal handlers are left as they are: a
    second Ctrl-C while the first unwinds stops at once, and a command's own (`pilot train`'s
    first Ctrl-C finishes the step and saves last.ckpt) raises nothing here. A stdout its reader
    closed (`pilot inspect X | head`) ends quietly with SIGPIPE's status, 141.
    """
    try:
        status = command()
        sys.stdout.flush()  # a closed pipe's error here, not in the interpreter's exit
        return status
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; rerun the same command to resume" if resumes else ""
        print(f"{prog}: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader left (`pilot inspect X | head`): quietly
        _silence_stdout()
        return 141  # as a shell reports SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what the closed pipe did
    not take raises nothing more (Python's advice for SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (captured)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def error_line(error: BaseException) -> str:
    """The message of `error`; for one re-raised from a DataLoader worker (torch puts the
    worker's whole traceback in it), the worker's own message, its traceback's last line."""
    text = str(error)
    if " in DataLoader worker process " in text and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "ValueError: a.jpg: not a readable image (...)"
        return last.split(": ", 1)[-1]
    return text


if __name__ == "__main__":
    sys.exit(main())
