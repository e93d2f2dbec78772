"""``dccnn``: the command-line entry point. Each command lives in its own module."""

from __future__ import annotations

import typer

from dccnn_deploy import __version__
from dccnn_deploy.cli import apply_cmd, batch_cmd, benchmark_cmd, demo_cmd, evaluate_cmd, export_cmd, export_raw_cmd
from dccnn_deploy.cli import register_cmd, report_cmd, train_cmd
from dccnn_deploy.cli import params as params_cmd

app = typer.Typer(
    name="dccnn",
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


app.command("register")(register_cmd.register)
app.command("apply")(apply_cmd.apply)
app.command("batch")(batch_cmd.batch)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("report")(report_cmd.report)
app.command("demo")(demo_cmd.demo)
app.command("train")(train_cmd.train)
app.command("release")(train_cmd.release)
app.command("export")(export_cmd.export)
app.command("build-engine")(export_cmd.build_engine)
app.command("export-raw")(export_raw_cmd.export_raw)
app.command("benchmark")(benchmark_cmd.benchmark)
app.command("params")(params_cmd.params)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
