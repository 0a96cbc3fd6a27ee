"""The Typer application every command registers with."""

from __future__ import annotations

from typing import Annotated

import typer

from .boundary import version

app = typer.Typer(
    help="Transfer learning for image classification: train on a folder of photos, then predict and export.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (Typer's, through click; no torch)
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings' line breaks are reflowed; a blank line starts a paragraph
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"finetune {version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print finetune's version and exit.")] = False,
):
    """Transfer learning for image classification: train on a folder of photos, then predict and export."""
