"""What every command shares: the Typer apps, the consoles, the error exit and the common options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from data.store import redact
from embeddings.encoder import DEFAULT_CONFIG
from valuation.pipeline import VECTOR_CACHE

app = typer.Typer(help="Multimodal collateral valuation and monitoring for warehouse financing.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
embed_app = typer.Typer(help="Encoders: train the in-domain image tower.", no_args_is_help=True)
index_app = typer.Typer(help="The FAISS SPU index: build it, search it.", no_args_is_help=True)
app.add_typer(embed_app, name="embed")
app.add_typer(index_app, name="index")
console = Console()
# soft wrap: an error is one line per problem, not re-wrapped at 80 columns in the middle of a phrase
errors = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[Optional[str], typer.Option("--db", help="Database URL (default: $PLEDGEVAL_DB_URL or "
                                                               "sqlite:///var/pledgeval.db).")]
ConfigOption = Annotated[str, typer.Option("--config", help="Encoder config: a name in embeddings/configs or a "
                                                             "JSON path.")]
CacheOption = Annotated[Path, typer.Option(help="Vector cache file.")]
DEFAULT_ENCODER = DEFAULT_CONFIG
DEFAULT_CACHE = VECTOR_CACHE


def open_store(db: str | None):
    """The store named by ``--db`` (or $PLEDGEVAL_DB_URL, or the default), or a one-line error naming it."""
    import sqlalchemy as sa

    from data import Store
    from data.store import database_url

    url = database_url(db)
    try:
        return Store(url)
    except (sa.exc.SQLAlchemyError, ImportError, OSError) as exc:
        try:
            shown = redact(url)
        except sa.exc.ArgumentError:
            shown = "(not a database URL)"
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        fail(f"cannot open the store {shown} (--db or $PLEDGEVAL_DB_URL): {first}")


def fail(message: str, code: int = 2) -> None:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def print_counts(title: str, counts: dict[str, int]) -> None:
    print_rows(title, ["table", "rows"], [[name, f"{n:,}"] for name, n in counts.items()])


def print_rows(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A table whose first column is left-aligned and the rest right-aligned (figures)."""
    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
