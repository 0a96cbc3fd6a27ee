"""What the terminal shows: progress bars (only on a terminal, gone when done) and names printed literally.

rich is imported inside the functions so that importing this module stays free for `--help`.
"""

from __future__ import annotations


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def quiet_console():
    """For the ranks of a data-parallel run other than rank 0: they print nothing."""
    from rich.console import Console

    return Console(stderr=True, quiet=True)


def progress(console):
    """A transient bar (description, bar, done/total, time left) on `console`; silent in logs, pipes and tests."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=True, disable=console is None or not console.is_terminal)


def track(items, description: str, console, total: int | None = None):
    """Yield from `items`, advancing a `progress` bar after each."""
    with progress(console) as bar:
        task = bar.add_task(description, total=len(items) if total is None else total)
        for item in items:
            yield item
            bar.advance(task)


def literal(text) -> str:
    """`text` (a path, a class name) with rich markup escaped: `x[/y]` is printed as written, never parsed."""
    from rich.markup import escape

    return escape(str(text))
