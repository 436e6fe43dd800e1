"""`harness ...` through harness.cli.main, with `bound` registered the way harness/cli.py
registers it (add_bound_command) in case this checkout's cli.py does not list it yet."""
import harness.cli as cli
from harness.bound_cli import add_bound_command


def run_cli(argv: list[str]) -> int:
    orig = cli._parser

    def parser():
        p = orig()
        sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
        if "bound" not in sub.choices:
            add_bound_command(sub)
        return p

    cli._parser = parser
    try:
        return cli.main(argv)
    finally:
        cli._parser = orig
