"""Subcommand groups of the `pilot` command, one module each.

Every module here defines `register(sub)`, which adds its parsers to the subparsers action `sub`
of `pilot.cli.build_parser` and sets `func` on each. Modules are found by name, so a new command
is a new file. Keep imports of torch and models inside the command functions: `pilot --help`
imports every module in this package.
"""
