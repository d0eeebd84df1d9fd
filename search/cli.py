"""The `slimsweep` command: run a sweep, print its front, pick (again) the deployable model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from evaluators.errors import ConfigError, SlimsweepError
from search.config import Experiment, load

EXIT_CONFIG, EXIT_INTERRUPTED = 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", help="experiment file (YAML)")
        p.add_argument("--storage", help="Optuna storage URL (overrides search.storage)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides tracking.uri)")
        p.add_argument("--output-dir", help="folder for outputs (overrides output_dir; default ./outputs)")

    run = sub.add_parser("run", help="run or resume a sweep, then pick and register the deployable model")
    common(run)
    run.add_argument("--trials", type=int, help="budget of finished trials (overrides search.trials)")
    run.add_argument("--parallel", type=int, help="trials in flight at once (overrides search.parallel)")
    run.add_argument("--ray-address", help="Ray cluster address, e.g. 'auto' (default: start a local Ray)")
    run.add_argument("--quiet", action="store_true", help="print only the summary")

    front = sub.add_parser("front", help="print the Pareto front of a sweep")
    common(front)

    pick = sub.add_parser("pick", help="re-run the choice with another policy, without re-running the sweep")
    common(pick)
    pick.add_argument("--max-accuracy-drop", type=float, help="points of accuracy the pick may lose")
    pick.add_argument("--max-latency-ms", type=float, help="p50 latency budget of the pick (ms)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {"storage": "search.storage", "tracking_uri": "tracking.uri", "output_dir": "output_dir",
             "trials": "search.trials", "parallel": "search.parallel", "max_accuracy_drop": "pick.max_accuracy_drop",
             "max_latency_ms": "pick.max_latency_ms"}
    return {dotted: getattr(args, attr) for attr, dotted in names.items() if getattr(args, attr, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a bad experiment file or flag, 130 when stopped by Ctrl-C)."""
    args = _parser().parse_args(argv)
    try:
        exp = load(args.experiment, _overrides(args))  # validated before anything is imported, started or written
        return {"run": _run, "front": _front, "pick": _pick}[args.command](exp, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SlimsweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _console():
    from rich.console import Console

    # Off a terminal (CI logs, pipes) rich would wrap at 80 columns and squeeze the front's table.
    return Console(width=None if sys.stdout.isatty() else 160)


def _ray_auth_for(address: str | None) -> None:
    """Present the cluster's token: Ray 2.60 clusters require one by default, and Ray reads the mode at import."""
    has_token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()
    if address and has_token:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _run(exp: Experiment, args: argparse.Namespace) -> int:
    _ray_auth_for(args.ray_address)  # before anything imports ray
    from search.pick import Policy
    from search.study import open_study
    from search.sweep import run_sweep
    from search.tracking import Tracker

    console = _console()
    try:
        summary = run_sweep(exp, ray_address=args.ray_address, quiet=args.quiet)
    except KeyboardInterrupt:  # before the loop began: nothing to keep
        console.print("stopped before any trial ran")
        return EXIT_INTERRUPTED
    if summary.requeued:
        console.print(f"resumed: trials {summary.requeued} were left unfinished by an earlier run and were queued again")
    if summary.interrupted:
        console.print(f"stopped: {summary.finished} finished trials are kept in {exp.storage_url}; "
                      f"run the same command to resume")
        return EXIT_INTERRUPTED
    console.print(f"{summary.finished} trials finished ({summary.failed} failed), {summary.ran_now} run now, "
                  f"in {summary.seconds:.0f} s")
    study = open_study(exp)
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    return _deliver(exp, study, tracker, Policy(exp.pick.max_accuracy_drop, exp.pick.max_latency_ms), verify=True,
                    console=console)


def _deliver(exp: Experiment, study: Any, tracker: Any, policy: Any, *, verify: bool, console: Any) -> int:
    """Verify (on `run`), pick, register and print; the parent run ends FINISHED, or FAILED with nothing to pick."""
    from search.deliver import deliver, teacher_latency
    from search.pareto import table

    tracker.resume_sweep()
    try:
        delivery = deliver(exp, study, tracker, policy, verify_latency=verify)
    except SlimsweepError:
        tracker.end("FAILED")
        raise
    teacher = dict(study.user_attrs["teacher"], latency_p50_ms_verified=teacher_latency(study))
    console.print(table(delivery.front, teacher))
    console.print(f"picked trial {delivery.choice.candidate.trial}: {delivery.choice.why}")
    console.print(f"wrote {delivery.onnx_path} and {delivery.card_path}; registered "
                  f"models:/{exp.name}@deployable (version {delivery.registered_version})")
    console.print(f"review: mlflow ui --backend-store-uri {exp.tracking_uri}")
    tracker.end("FINISHED")
    return 0


def _front(exp: Experiment, args: argparse.Namespace) -> int:
    from search.deliver import teacher_latency, with_verified
    from search.pareto import front, table
    from search.study import open_study

    _require_study(exp)
    study = open_study(exp)
    if "teacher" not in study.user_attrs:
        raise SlimsweepError(f"the study {exp.name!r} has no finished trial yet; run `slimsweep run {args.experiment}`")
    teacher = dict(study.user_attrs["teacher"], latency_p50_ms_verified=teacher_latency(study))
    _console().print(table(with_verified(study, front(study)), teacher, title=f"Pareto front of {exp.name}"))
    return 0


def _pick(exp: Experiment, args: argparse.Namespace) -> int:
    from search.pick import Policy
    from search.study import open_study
    from search.tracking import Tracker

    _require_study(exp)
    study = open_study(exp)
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    return _deliver(exp, study, tracker, Policy(exp.pick.max_accuracy_drop, exp.pick.max_latency_ms), verify=False,
                    console=_console())


def _require_study(exp: Experiment) -> None:
    url = exp.storage_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SlimsweepError(f"no sweep found for {exp.name!r} at {url}; run `slimsweep run` on it first")


if __name__ == "__main__":
    sys.exit(main())
