"""The ``kiln`` command line: thin verbs over functions that do the work.

Each command parses its arguments, calls one function in the layer below, prints, and returns an
exit code. ``main()`` is the one place where errors become exit codes; a user's mistake prints a
message, never a traceback, unless ``--debug`` is given.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from kiln.errors import KilnError


class _LazyGroup(click.Group):
    """Imports a sub-command's module only when that command runs, so ``kiln plan`` never pays
    for the runners' or the ML layers' imports."""

    lazy: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            mod = __import__(module, fromlist=[attr])
            return getattr(mod, attr)
        return super().get_command(ctx, name)


class KilnGroup(_LazyGroup):
    # command name -> "module:attribute" of a click.Command
    lazy = {
        "run-workflow": "kiln.runners.cli:run_workflow",
        "logs": "kiln.runners.cli:logs",
        "stop": "kiln.runners.cli:stop",
    }


@click.group(cls=KilnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="KILN_DEBUG", help="Show tracebacks and debug logs.")
@click.option("-C", "--repo", "repo", type=click.Path(file_okay=False), default=None,
              help="The GitOps repository (default: the current directory).")
@click.version_option(package_name="kiln")
@click.pass_context
def cli(ctx: click.Context, debug: bool, repo: str | None) -> None:
    """kiln: declarative ML. Edit YAML specs, `kiln plan`, `kiln apply`."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["repo"] = os.path.abspath(repo) if repo else os.getcwd()
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("KILN_DEBUG"))
    try:
        rv = cli.main(args=argv, prog_name="kiln", standalone_mode=False)
    except KilnError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
