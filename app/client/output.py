"""What the ``convserve`` commands share for output: the consoles, tables and failures."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Rows:
    """A table: drawn for a terminal, tab-separated lines (a header, then a line per row)
    when standard output is a pipe or a file, so nothing wraps mid-word and ``cut``,
    ``sort`` and ``awk`` can read it."""

    def __init__(self, *columns: str, title: str | None = None) -> None:
        self.columns, self.title = columns, title
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(tuple(cells))

    def show(self) -> None:
        if out.is_terminal:
            table = Table(title=self.title)
            for name in self.columns:
                table.add_column(name, overflow="fold")
            for row in self.rows:
                table.add_row(*row)
            out.print(table)
            return
        if self.title:
            print(f"\n{self.title}")
        for row in (self.columns, *self.rows):
            print("\t".join(str(c).replace("\t", " ").replace("\n", " ") for c in row))


def _table(*columns: str, title: str | None = None) -> Rows:
    return Rows(*columns, title=title)


class Failure(Exception):
    """A command failure that is not an API error; ``message`` is printed as is."""
