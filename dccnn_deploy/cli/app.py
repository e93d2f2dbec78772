"""``dccnn``: the command-line entry point. Each command lives in its own module.

Start-up: a command's module (and with it torch, nibabel, onnx, Pillow) is imported only
when that command runs or shows its own ``--help``. ``dccnn --help`` lists the commands with
the first line of each function's docstring, read from the module's source without importing
it, and ``dccnn --version`` needs nothing beyond Typer.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup

from dccnn_deploy import __version__

#: command name -> (module in dccnn_deploy.cli, function), in the order ``--help`` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "register": ("register_cmd", "register"),
    "apply": ("apply_cmd", "apply"),
    "batch": ("batch_cmd", "batch"),
    "evaluate": ("evaluate_cmd", "evaluate"),
    "report": ("report_cmd", "report"),
    "demo": ("demo_cmd", "demo"),
    "train": ("train_cmd", "train"),
    "release": ("train_cmd", "release"),
    "export": ("export_cmd", "export"),
    "build-engine": ("export_cmd", "build_engine"),
    "export-raw": ("export_raw_cmd", "export_raw"),
    "benchmark": ("benchmark_cmd", "benchmark"),
    "params": ("params", "params"),
}


@lru_cache(maxsize=None)
def short_help(name: str) -> str:
    """First line of the command function's docstring, parsed from its source file."""
    module, func = COMMANDS[name]
    spec = importlib.util.find_spec(f"dccnn_deploy.cli.{module}")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            return (ast.get_docstring(node) or "").strip().splitlines()[0] if ast.get_docstring(node) else ""
    return ""


def load_command(name: str):
    """The command as a click command (imports its module)."""
    module, func = COMMANDS[name]
    fn = getattr(importlib.import_module(f"dccnn_deploy.cli.{module}"), func)
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(name)(fn)
    command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose commands are imported on use; listing them imports nothing."""

    _listing = False

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the group's own --help: name and one line, no import
            text = short_help(cmd_name)
            return TyperCommand(name=cmd_name, help=text, short_help=text)
        return load_command(cmd_name)

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="dccnn",
    cls=LazyGroup,
    help="DCCNN-LSTM-Reg: symmetric diffeomorphic brain MRI registration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dccnn-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """DCCNN-LSTM-Reg: symmetric diffeomorphic brain MRI registration."""


#: commands after which the process leaves at once (``os._exit``) once everything is written and
#: closed: the interpreter's teardown of torch and of a registration's arrays takes ~0.8 s after a
#: 1 mm registration (docs/benchmarks.md); training (process groups, DDP) exits normally
FAST_EXIT = frozenset({"register", "batch", "apply", "demo", "evaluate"})
#: commands that pause Python's cyclic garbage collector while they import torch and the pipeline;
#: :func:`~dccnn_deploy.cli.register_cmd.options_from_cli` resumes it right after those imports
PAUSED_COLLECTION = frozenset({"register", "batch", "demo"})


def main() -> None:
    """The ``dccnn`` entry point."""
    if len(sys.argv) < 2 or sys.argv[1] not in FAST_EXIT:
        app()
        return
    from dccnn_deploy.runtime.allocator import tune_allocator
    from dccnn_deploy.runtime.collector import pause_collection
    from dccnn_deploy.runtime.openmp import tune_openmp

    if sys.argv[1] in PAUSED_COLLECTION:
        pause_collection()  # its full passes over torch's ~10^6 new objects took ~0.25 s
    tune_allocator()  # before torch allocates anything: freed blocks are reused, not re-faulted
    tune_openmp()  # before torch loads OpenMP: idle workers leave the cores to the compiled kernels sooner
    try:
        app()
    except SystemExit as done:  # Typer always ends this way; any other exception keeps its traceback
        code = done.code
    else:
        code = 0
    if isinstance(code, str):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`dccnn register --json ... | head`) or stream
            pass
    os._exit(0 if code is None else int(code))


if __name__ == "__main__":
    main()
