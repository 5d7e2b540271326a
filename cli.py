"""Segmenter for MindSpore on Cityscapes: one command group, thin over the packages.

Each command parses options, calls into prep/, mindrecords/, model/, train/ or evaluate/,
and prints results. Errors the user can fix exit non-zero with a message naming the file.
"""
from __future__ import annotations

import sys

import click


class UserError(click.ClickException):
    """A bad input: printed as `error: ...`, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Segmenter (ViT + Mask Transformer) on Cityscapes with MindSpore."""


if __name__ == "__main__":
    main()
