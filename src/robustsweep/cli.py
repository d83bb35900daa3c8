"""``robustsweep``: a thin command line over the library.

Every user-fixable problem is a :class:`~robustsweep.errors.UserError`,
printed as one paragraph without a traceback, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Callable, Sequence

from .errors import UserError


def _print_table(rows: Sequence[tuple[str, str]], title: str | None = None) -> None:
    if title:
        print(title)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_trial_config
    from .trial import run_trial

    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data_root={args.data_root}")
    config = load_trial_config(args.config, overrides).resolved()
    print(f"robustsweep run: {config.variant} on {config.dataset}/{config.model}, batch {config.batch_size}, "
          f"lr {config.effective_lr:g} ({config.schedule}), {config.epochs} epochs, seed {config.seed}, "
          f"MLflow {config.mlflow_tracking_uri} [{config.mlflow_experiment}]", flush=True)
    outcome = run_trial(config, progress=not args.quiet, log=lambda m: print(m, flush=True),
                        tags={"mode": "debug"})
    rows = [(k, _fmt(v)) for k, v in outcome.metrics.items()]
    print()
    _print_table(rows, f"{outcome.status} (MLflow run {outcome.run_id}):")
    return 0


def cmd_options(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import TrialConfig

    for f in dataclasses.fields(TrialConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        print(f"{f.name} (default {default!r})")
        print(textwrap.indent(textwrap.fill(f.metadata.get("help", ""), 76), "    "))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustsweep",
        description="Sweeps that measure how optimizers change adversarial robustness and Hessian curvature.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one trial in-process (local debug mode, no Ray)")
    run.add_argument("config", nargs="?", help="trial YAML file (settings: see `robustsweep options`)")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=0.1 eps=[0.03,0.15] device=cpu")
    run.add_argument("--data-root", help="dataset folder (also ROBUSTSWEEP_DATA_ROOT)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    options = sub.add_parser("options", help="list every trial setting with its default and meaning")
    options.set_defaults(func=cmd_options)
    return parser


def _split_config_and_overrides(args: argparse.Namespace) -> None:
    """`run lr=0.1` (no file) puts the override in `config`: move it back."""
    if getattr(args, "config", None) and "=" in args.config and not os.path.exists(args.config):
        args.overrides = [args.config, *args.overrides]
        args.config = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _split_config_and_overrides(args)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        print(f"robustsweep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("robustsweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
