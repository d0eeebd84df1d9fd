"""The `slimsweep` command: run a sweep, print its front, pick (again) the deployable model."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from evaluators.errors import ConfigError, SlimsweepError

if TYPE_CHECKING:  # the schema imports the registries: loaded by main, after it decides about extensions
    from search.config import Experiment

EXIT_CONFIG, EXIT_INTERRUPTED = 2, 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slimsweep")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimsweep", description=__doc__)
    parser.add_argument("--version", action="version", version=f"slimsweep {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", help="experiment file (YAML)")
        p.add_argument("--storage", help="Optuna storage URL (overrides search.storage)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides tracking.uri)")
        p.add_argument(
            "--output-dir",
            help="folder for outputs (overrides output_dir; relative to the current "
            "folder; default: output_dir relative to the experiment file's folder)",
        )
        p.add_argument("--verbose", action="store_true", help="show Ray's and MLflow's own log lines")

    run = sub.add_parser("run", help="run or resume a sweep, then pick and register the deployable model")
    common(run)
    run.add_argument("--trials", type=int, help="budget of finished trials (overrides search.trials)")
    run.add_argument("--parallel", type=int, help="trials in flight at once (overrides search.parallel)")
    run.add_argument("--ray-address", help="Ray cluster address, e.g. 'auto' (default: start a local Ray)")
    run.add_argument("--quiet", action="store_true", help="print only the summary")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved experiment, the space's size and the checked target; start and write nothing",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start over: delete this experiment's study, MLflow runs and outputs first (instead of resuming)",
    )
    run.add_argument(
        "--no-tracking",
        action="store_true",
        help="run without MLflow (the study keeps everything; `slimsweep sync` back-fills MLflow later)",
    )

    sync = sub.add_parser(
        "sync",
        help="back-fill MLflow from the study (runs, tags, artifacts, front, pick); "
        "running it again adds nothing twice",
    )
    common(sync)

    front = sub.add_parser("front", help="print the Pareto front of a sweep")
    common(front)
    front.add_argument("--json", action="store_true", help="print the front as JSON")
    front.add_argument(
        "--knobs", action="store_true", help="also show the knobs that tell the members apart, one per line"
    )
    front.add_argument("--target", help="the front on a target the sweep was retargeted to (e.g. cpu-t2-b64)")

    retarget = sub.add_parser(
        "retarget", help="re-time a finished sweep's trained models on another target and pick there; trains nothing"
    )
    common(retarget)
    retarget.add_argument("--target", default="cpu", help="cpu | cuda | tensorrt | openvino | remote (default cpu)")
    retarget.add_argument("--threads", type=int, default=1)
    retarget.add_argument("--batch-size", type=int, default=1)
    retarget.add_argument("--device-id", type=int, default=0)
    retarget.add_argument("--url", help="device agent URL (target remote)")
    retarget.add_argument("--token-file", help="file holding the device agent's token (target remote)")
    retarget.add_argument(
        "--accuracy",
        choices=["host", "device"],
        help="score accuracy on the device agent (remote); default: the file's target.accuracy when --url is the "
        "file's own agent, else host",
    )
    retarget.add_argument("--seconds", type=float, help="cap of the side-by-side timing (default pick.verify_seconds)")
    retarget.add_argument("--json", action="store_true", help="print the target's model card as JSON")

    status = sub.add_parser("status", help="where a sweep stands: budget, done, failed, running, front, pick")
    common(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    pick = sub.add_parser("pick", help="re-run the choice with another policy, without re-running the sweep")
    common(pick)
    pick.add_argument("--max-accuracy-drop", type=float, help="points of accuracy the pick may lose")
    pick.add_argument("--max-latency-ms", type=float, help="p50 latency budget of the pick (ms)")
    pick.add_argument("--min-throughput", type=float, help="items per second the pick must reach at the target's batch")
    pick.add_argument("--json", action="store_true", help="print the model card as JSON (progress goes to stderr)")

    bench = sub.add_parser("bench", help="time one ONNX model on a target, by the sweep's own method")
    bench.add_argument("model", help="ONNX file")
    bench.add_argument("--target", default="cpu", help="cpu | cuda | tensorrt | openvino | remote (default cpu)")
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--batch-size", type=int, help="default: the model's own batch if it fixes one, else 1")
    bench.add_argument("--device-id", type=int, default=0)
    bench.add_argument("--url", help="device agent URL (target remote)")
    bench.add_argument("--token-file", help="file holding the device agent's token (target remote)")
    bench.add_argument("--max-seconds", type=float, default=3.0, help="time cap of the repeat loop")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")

    compare = sub.add_parser(
        "compare",
        help="time ONNX models side by side (interleaved, round after round) and "
        "give each one's speed-up over a baseline with a 95%% interval",
    )
    compare.add_argument("models", nargs="+", help="ONNX files")
    compare.add_argument("--baseline", help="the model speed-ups are taken against (default: the first)")
    compare.add_argument("--target", default="cpu", help="cpu | cuda | tensorrt | openvino (default cpu)")
    compare.add_argument("--threads", type=int, default=1)
    compare.add_argument("--batch-size", type=int, help="default: the models' own batch if they fix one, else 1")
    compare.add_argument("--max-seconds", type=float, default=30.0, help="time cap of all rounds together")
    compare.add_argument("--json", action="store_true", help="print the figures as JSON")

    agent = sub.add_parser("agent", help="serve this device as a remote target: time ONNX models sent over HTTP")
    agent.add_argument("--port", type=int, default=8470)
    agent.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default: loopback only; 0.0.0.0 opens it to the network)",
    )
    agent.add_argument(
        "--token-file", required=True, help="file holding the bearer token clients must send (>= 16 bytes, mode 600)"
    )
    agent.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    agent.add_argument("--tls-key", help="PEM private key of --tls-cert")
    agent.add_argument("--max-model-mb", type=float, default=64.0, help="largest model accepted (MB)")
    agent.add_argument(
        "--max-memory-mb",
        type=int,
        default=4096,
        help="memory the measuring worker may use (MB); a model or batch that needs more gets 400",
    )
    agent.add_argument("--queue", type=int, default=4, help="measurements accepted at once; more get 503")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "storage": "search.storage",
        "tracking_uri": "tracking.uri",
        "output_dir": "output_dir",
        "trials": "search.trials",
        "parallel": "search.parallel",
        "max_accuracy_drop": "pick.max_accuracy_drop",
        "max_latency_ms": "pick.max_latency_ms",
        "min_throughput": "pick.min_throughput_per_s",
    }
    return {dotted: getattr(args, attr) for attr, dotted in names.items() if getattr(args, attr, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a bad experiment file or flag, 130 when stopped by Ctrl-C)."""
    args = _parser().parse_args(argv)
    from evaluators.registry import ExtensionError, load_extensions, skip_extensions

    try:
        if args.command in {"bench", "agent", "compare"}:
            skip_extensions()  # they read no experiment file: no extension's code runs in them
            return {"bench": _bench, "agent": _agent, "compare": _compare}[args.command](args)
        load_extensions()  # before the file is read, whose names may be an extension's; a broken one stops here
        from search.config import load

        exp = _outputs_beside_file(load(args.experiment, _overrides(args)), args)  # validated before anything
        _quiet_libraries(args.verbose)  # is started or written
        return {"run": _run, "front": _front, "pick": _pick, "status": _status, "sync": _sync, "retarget": _retarget}[
            args.command
        ](exp, args)
    except ExtensionError as exc:  # one line that names it; nothing that would look the registries up again
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SlimsweepError as exc:
        from search.config import cut_message

        print(f"error: {cut_message(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigError) or _is_data_error(exc) else 1


def entry() -> None:
    """The console script: run main(), then leave without the interpreter's teardown of torch, Ray and MLflow, which
    takes seconds after a sweep and does nothing a user needs."""
    code = main()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        # Before the exit hooks: Ray's own hook first sleeps half a second for workers' output to reach this
        # terminal, and slimsweep's workers print nothing here (log_to_driver=False).
        try:
            ray.shutdown()
        except BaseException:  # noqa: BLE001 - as inside the exit hooks: a sweep that ended well stays well ended
            pass
    threading._shutdown()  # what a normal exit waits for: non-daemon threads, thread pools' exit hooks included
    atexit._run_exitfuncs()  # Ray's shutdown, MLflow's active run, logging: everything registered for the exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that left early (`| head`), a stream already closed
            pass
    os._exit(code)


def _is_data_error(exc: SlimsweepError) -> bool:
    """A task's data or checkpoint is unusable: the user's input, so exit 2 like a bad file."""
    from experiments.readers import DataError

    return isinstance(exc, DataError)


def _console(stderr: bool = False):
    from rich.console import Console

    # Off a terminal (CI logs, pipes) rich would wrap at 80 columns and squeeze the front's table.
    stream = sys.stderr if stderr else sys.stdout
    return Console(width=None if stream.isatty() else 160, stderr=stderr)


def _outputs_beside_file(exp: Experiment, args: argparse.Namespace) -> Experiment:
    """A relative output_dir in the file resolves against the file's folder (so a command works from any folder);
    --output-dir resolves against the current folder."""
    if getattr(args, "output_dir", None) is not None or Path(exp.output_dir).is_absolute():
        return exp
    return exp.model_copy(update={"output_dir": str(Path(args.experiment).resolve().parent / exp.output_dir)})


def _quiet_libraries(verbose: bool) -> None:
    """Keep MLflow's, Ray's and Alembic's info lines out of the output unless --verbose."""
    import logging

    level = logging.INFO if verbose else logging.WARNING
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(level))  # MLflow sets its level at import
    for name in ("mlflow", "ray", "alembic", "optuna"):
        logging.getLogger(name).setLevel(level)
    os.environ["SLIMSWEEP_VERBOSE"] = "1" if verbose else ""


def _ray_auth_for(address: str | None) -> None:
    """Present the cluster's token: Ray 2.60 clusters require one by default, and Ray reads the mode at import."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    has_token = os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file()
    if address and has_token:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _importable_here(exp: Experiment) -> None:
    """Let a plugin task (`entry: module:function`) live in the current folder; only a plugin task, and after the
    installed packages, so a file there (a `ray.py`) never shadows one. The Ray workers get the same, last on their
    path (search/raystart.py); no other command or task puts this folder on any path."""
    from evaluators.registry import LAUNCH_FOLDER_VARIABLE
    from experiments.schema import PluginTask

    cwd = os.getcwd()
    if isinstance(exp.task, PluginTask):
        os.environ[LAUNCH_FOLDER_VARIABLE] = cwd  # read by the Ray workers' setup; never a place for extensions
        if cwd not in sys.path:
            sys.path.append(cwd)


def _run(exp: Experiment, args: argparse.Namespace) -> int:
    # A process started with SIGINT ignored (a background job, a parent that ignored it) would not stop on
    # Ctrl-C / kill -INT; a sweep always stops cleanly on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from search.preflight import check_ray_address, check_stores

    check_stores(exp, tracking=not args.no_tracking)  # before anything is written or started
    check_ray_address(args.ray_address)  # before the teacher trains: a dead head fails in seconds
    _ray_auth_for(args.ray_address)  # before anything imports ray
    _importable_here(exp)
    from evaluators.secrets import mask_secrets
    from search.executor import RayExecutor
    from search.pick import make_policy
    from search.sweep import MAX_ASKS_PER_TRIAL, prepare, sweep

    spec = exp.target.spec()
    if not args.ray_address:
        _check_target(spec)  # on a cluster the station checks it where it lands
    if args.dry_run:
        return _dry_run(exp, args)
    console = _console()
    from search.fresh import mark_output, start_over

    if args.fresh:
        console.print(start_over(exp))
    from search.stored import check_resume

    check_resume(exp)  # a study made for another task, space or target exits 2 before the teacher trains
    try:
        # The task and teacher; their errors exit 2 before the study or MLflow is written.
        ctx = prepare(exp, say=None if args.quiet else console.print)
        mark_output(exp.out, exp.name)  # a folder slimsweep makes carries its marker: --fresh deletes only such
        resources = exp.search.resources
        executor = RayExecutor(
            address=args.ray_address,
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            trial_timeout_s=exp.search.trial_timeout_s,
        )
        executor.open_station(spec, reserve_cores=exp.target.reserve_cores)
        swept = sweep(exp, executor, ctx, quiet=args.quiet, offline=args.no_tracking)
        summary = swept.summary
    except KeyboardInterrupt:  # before the loop began: nothing to keep
        console.print("stopped before any trial ran")
        return EXIT_INTERRUPTED
    if summary.requeued:
        console.print(
            f"resumed: trials {summary.requeued} were left unfinished by an earlier run and were queued again"
        )
    if summary.interrupted:
        console.print(
            f"stopped: {summary.finished} finished trials are kept in {mask_secrets(exp.storage_url)}; run the same "
            "command to resume"
        )
        return EXIT_INTERRUPTED
    made = f" and {summary.on_the_way} models made on the trials' way" if summary.on_the_way else ""
    console.print(
        f"{summary.finished} trials finished ({summary.failed} failed, {summary.reused} answered from an "
        f"earlier identical plan){made}, {summary.ran_now} run now "
        f"({summary.parallel} at a time), in {summary.seconds:.0f} s; "
        f"latency cache: {summary.cache.get('latency_cache_hits', 0)} hits, "
        f"{summary.cache.get('latency_cache_misses', 0)} timed"
    )
    from search.at_once import fewer_at_once
    from search.budget import describe_spending

    fewer = fewer_at_once(exp, summary.parallel, cluster=bool(args.ray_address))
    if fewer:
        console.print(f"parallel: {fewer}", soft_wrap=True)
    if summary.failed or summary.retried:
        kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(summary.failed_kinds.items()))
        console.print(
            f"failures: {kinds or 'none'}; {summary.retried} attempts run again after a machinery "
            f"failure (search.max_retries = {exp.search.max_retries})",
            soft_wrap=True,
        )
    if summary.tracking_down:
        console.print(
            f"MLflow at {mask_secrets(exp.tracking_uri)} became unreachable ({summary.tracking_down[:200]}); the sweep "
            f"went on and the study holds every trial: run `slimsweep sync {args.experiment}` once it is "
            f"back",
            soft_wrap=True,
        )
    if summary.unmirrored:
        numbers = ", ".join(map(str, summary.unmirrored[:10]))
        console.print(
            f"MLflow refused the runs of {len(summary.unmirrored)} trials ({numbers}; the warnings above say why); "
            f"the study holds them: run `slimsweep sync {args.experiment}`",
            soft_wrap=True,
        )
    if summary.compute is not None:
        console.print(f"compute: {describe_spending(summary.compute)}", soft_wrap=True)
    if summary.dominated:
        console.print(
            f"latency first: {summary.dominated} plans were slower and larger untrained than a model already within "
            f"the noise of the best accuracy, and were not trained (they cost no trial; search.skip_dominated)",
            soft_wrap=True,
        )
    if summary.out_of_plans:
        console.print(
            f"stopped asking after {MAX_ASKS_PER_TRIAL}x the budget in proposals: the sampler kept proposing plans "
            "that could not reach the front; the space may hold fewer such plans than search.trials",
            soft_wrap=True,
        )
    if exp.constraints.max_latency_ms is not None:
        console.print(
            f"latency first: {summary.skipped_training} trials broke the "
            f"{exp.constraints.max_latency_ms:g} ms budget untrained and were not trained "
            f"(about {summary.seconds_saved:.0f} s of training saved)"
        )
    # The pick works with what the sweep has open: its study, its MLflow run (offline once MLflow was lost), the
    # station (it times the teacher and the front side by side, on its reserved cores) and the task's data.
    return _deliver(
        exp,
        swept.study,
        swept.tracker,
        make_policy(exp.pick),
        retime=executor.compare,
        console=console,
        example=ctx.data.x_val[:2],
    )


def _sync(exp: Experiment, args: argparse.Namespace) -> int:
    from search.preflight import check_stores
    from search.resync import resync
    from search.study import open_study

    _require_study(exp)
    check_stores(exp)
    report = resync(exp, open_study(exp))
    _console().print(report.describe(), soft_wrap=True)
    return 0


def _dry_run(exp: Experiment, args: argparse.Namespace) -> int:
    """Print what `run` would do; start nothing and write nothing."""
    from search.dryrun import as_text, report

    checked = (
        f"{exp.target.kind}: checked here, it runs"
        if not args.ray_address
        else f"{exp.target.kind}: checked where the bench station lands on the cluster (not here)"
    )
    rep = report(exp, checked)
    print(json.dumps(rep, indent=2) if getattr(args, "json", False) else as_text(rep))
    return 0


def _check_target(spec: Any) -> None:
    """Fail at start, before anything is written, when the target cannot run here."""
    from evaluators.targets import make_target
    from search.builds import build_problem

    problem = None if make_target(spec).takes_url else build_problem(spec.kind)  # a remote device brings its own
    if problem and problem.startswith("two or more"):
        raise ConfigError(f"target: {problem}")
    try:
        make_target(spec).check()
    except SlimsweepError as exc:
        raise ConfigError(f"target: {exc}" + (f"\n(also: {problem})" if problem else "")) from None


def _deliver(
    exp: Experiment, study: Any, tracker: Any, policy: Any, *, retime: Any, console: Any, example: Any = None
) -> int:
    """Verify (on `run`), pick, register and print; the parent run ends FINISHED, or FAILED with nothing to pick."""
    from evaluators.secrets import mask_secrets
    from search.deliver import accuracy_threshold, deliver, teacher_latency
    from search.pareto import table
    from search.study import teacher

    tracker.resume_sweep()
    try:
        delivery = deliver(exp, study, tracker, policy, retime=retime, say=console.print, example=example)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        console.print("stopped before the pick; `slimsweep pick` re-runs it without re-running the sweep")
        return EXIT_INTERRUPTED
    except BaseException:
        tracker.end("FAILED")
        raise
    console.print(
        table(
            delivery.front,
            dict(teacher(study), latency_p50_ms_verified=teacher_latency(study)),
            pick=delivery.choice.candidate.trial,
            accuracy_threshold=accuracy_threshold(study, policy),
            tied=delivery.choice.tied,
            won_by=delivery.choice.won_by,
        )
    )
    console.print(f"picked trial {delivery.choice.candidate.trial}: {delivery.choice.why}")
    console.print(_speedup_line(delivery.card))
    registered = (
        f"registered models:/{exp.name}@deployable (version {delivery.registered_version})"
        if delivery.registered_version
        else "not registered: MLflow is unreachable; `slimsweep sync` registers it"
    )
    console.print(f"wrote {delivery.onnx_path} and {delivery.card_path}; {registered}")
    if tracker.down:
        console.print("review: once MLflow is back, `slimsweep sync` writes the trials and the saved view of the front")
    else:
        from search.commands import tool

        ui = f"{tool('mlflow')} ui --backend-store-uri {mask_secrets(exp.tracking_uri)}"  # no activated env needed
        serve = "" if tracker.remote else f"{ui}, then "
        link = mask_secrets(
            tracker.view_link(exp.tracking_uri.rstrip("/") if tracker.remote else "http://127.0.0.1:5000")
        )
        console.print(
            f"review: {serve}open MLflow's saved view 'slimsweep: the front' (every trial, fastest first, and a chart "
            "of accuracy against latency):"
        )
        console.print(link, soft_wrap=True)  # one unbroken line, to copy
    tracker.end("FINISHED")
    return 0


def _speedup_line(card: dict[str, Any]) -> str:
    """The pick's speed-up over the fp32 teacher in words, saying plainly when it is within the noise."""
    speed = card["speedup_vs_teacher"]
    if card.get("speedup_ci_low") is None:
        return f"speed-up over the fp32 teacher: {speed:.2f}x ({card['speedup_method']})"
    covers = card.get("speedup_interval_covers") or "95% interval of the median of per-round ratios"
    line = (
        f"speed-up over the fp32 teacher, timed side by side: {speed:.2f}x "
        f"[{card['speedup_ci_low']:.2f}, {card['speedup_ci_high']:.2f}] ({covers})"
    )
    if not card["speedup_clear_of_one"]:
        line += "; the interval includes 1.0: on this machine the pick is not measurably faster than the teacher"
    return line


def _front(exp: Experiment, args: argparse.Namespace) -> int:
    from search.deliver import accuracy_threshold, teacher_latency, with_verified
    from search.pareto import front, table
    from search.pick import make_policy
    from search.study import teacher as stored_teacher

    study = _swept_study(exp, args)
    if getattr(args, "target", None):
        return _target_front(exp, study, args)
    teacher = dict(stored_teacher(study), latency_p50_ms_verified=teacher_latency(study))
    members = with_verified(study, front(study))
    threshold = accuracy_threshold(study, make_policy(exp.pick))
    pick = _picked(exp)
    if args.json:
        print(
            json.dumps(
                {
                    "experiment": exp.name,
                    "teacher": teacher,
                    "accuracy_threshold": threshold,
                    "pick": None if pick is None else pick["trial"],
                    "pick_tied_with": [] if pick is None else [t["trial"] for t in pick.get("tied_with", [])],
                    "pick_won_by": None if pick is None else pick.get("won_by"),
                    "front": [_row(c) for c in members],
                },
                indent=2,
            )
        )
        return 0
    _console().print(
        table(
            members,
            teacher,
            title=f"Pareto front of {exp.name}",
            pick=None if pick is None else pick["trial"],
            accuracy_threshold=threshold,
            tied=[] if pick is None else [t["trial"] for t in pick.get("tied_with", [])],
            won_by="" if pick is None else pick.get("won_by", ""),
            show_knobs=args.knobs,
        )
    )
    if pick is not None:
        print(f"why trial {pick['trial']}: {pick['why']}")
    return 0


def _target_front(exp: Experiment, study: Any, args: argparse.Namespace) -> int:
    """`front --target`: the front a retargeting built, from what it measured (nothing is timed again)."""
    from search.retarget import target_front
    from search.retarget_report import rows, table

    view = target_front(exp, study, args.target)
    card = exp.out / view.slug / "model_card.json"
    pick = json.loads(card.read_text()) if card.is_file() else None
    if args.json:
        document = {
            "experiment": exp.name,
            "target": view.slug,
            "accuracy_scored_on": view.accuracy_on,
            "timed_with": view.runtime,
            "not_runnable": view.not_runnable,
            "teacher": view.teacher,
            "pick": None if pick is None else pick["trial"],
            "front": rows(view),
        }
        print(json.dumps(document, indent=2))
        return 0
    _console().print(table(view, pick=None if pick is None else pick["trial"]))
    runtime = view.runtime
    if runtime.get("providers"):  # which provider timed it (a session that fell back is never timed)
        print(f"timed with {', '.join(map(str, runtime['providers']))}, onnxruntime {runtime.get('onnxruntime')}")
    if view.not_runnable:
        print(f"not runnable there, left off this front: trials {', '.join(sorted(view.not_runnable, key=int))}")
    if pick is not None:
        print(f"why trial {pick['trial']}: {pick['why']}")
    return 0


def _retarget(exp: Experiment, args: argparse.Namespace) -> int:
    """Re-time the finished sweep's trained models on another target, pick there and hand over; trains nothing."""
    from search.config import Target
    from search.preflight import check_stores
    from search.retarget import alias, retarget
    from search.retarget_report import table
    from search.timing_cli import validated
    from search.tracking import Tracker

    fields = {
        "kind": args.target,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "device_id": args.device_id,
        "url": args.url,
        "token_file": args.token_file,
        # The file's `accuracy: device` is about its own agent: it applies when retargeting to that agent.
        "accuracy": args.accuracy or (exp.target.accuracy if args.url and args.url == exp.target.url else "host"),
    }
    target = validated(Target, {k: v for k, v in fields.items() if v is not None}, "--target flags")
    _check_target(target.spec())
    check_stores(exp, storage=False)
    study = _swept_study(exp, args)
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    console = _console(stderr=args.json)
    _rebuild_view(exp, study, tracker, console, args)
    done = retarget(exp, study, target, tracker, compare_seconds=args.seconds, say=console.print)
    if args.json:
        print(done.card_path.read_text())
        return 0
    console.print(table(done.view, pick=done.choice.candidate.trial))
    console.print(f"picked trial {done.choice.candidate.trial} for {done.view.slug}: {done.choice.why}")
    registered = (
        f"registered models:/{exp.name}@{alias(done.view.slug)} (version {done.version})"
        if done.version
        else "not registered: MLflow is unreachable"
    )
    console.print(f"wrote {done.onnx_path} and {done.card_path}; {registered}; trained nothing")
    return 0


def _row(c: Any) -> dict[str, Any]:
    """A front member for JSON: its figures and its plan as a mapping."""
    from dataclasses import asdict

    row = {k: v for k, v in asdict(c).items() if k != "params_dict"}
    return {**row, "knobs": dict(c.params_dict)}


def _picked(exp: Experiment) -> dict[str, Any] | None:
    """The model card of the current hand-over, if there is one (a crash left unfinished is completed first)."""
    path = exp.out / "model_card.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _status(exp: Experiment, args: argparse.Namespace) -> int:
    from search.status import as_text, sweep_status

    state = sweep_status(exp)  # loads only: a misspelt name or an unreachable store is an error, not a new study
    print(json.dumps(state, indent=2) if args.json else as_text(state))
    return 0


def _pick(exp: Experiment, args: argparse.Namespace) -> int:
    from search.pick import make_policy
    from search.preflight import check_stores
    from search.tracking import Tracker

    check_stores(exp, storage=False)  # the study is read; the pick is written to MLflow
    study = _swept_study(exp, args)
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    console = _console(stderr=args.json)  # with --json, stdout holds only the JSON
    _rebuild_view(exp, study, tracker, console, args)
    code = _deliver(exp, study, tracker, make_policy(exp.pick), retime=None, console=console)
    if args.json and code == 0:
        print(json.dumps(_picked(exp), indent=2))
    return code


def _rebuild_view(exp: Experiment, study: Any, tracker: Any, console: Any, args: argparse.Namespace) -> None:
    """MLflow is a view of the study: a store that lacks the sweep (another tracking server, a lost mlflow.db) gets
    its parent run and trial runs back first, as `slimsweep sync` writes them, so the pick registers from its run."""
    from mlflow.exceptions import MlflowException

    from evaluators.secrets import mask_secrets
    from search.resync import rebuild

    if tracker.down:
        return  # unreachable: the pick is handed over without the registry, and says to run `slimsweep sync`
    try:
        _, logged, parent = rebuild(exp, study, tracker)
    except MlflowException as exc:
        reason = mask_secrets((str(exc).strip() or type(exc).__name__).splitlines()[0])[:300]
        raise SlimsweepError(
            f"tracking.uri: MLflow refused the sweep's runs ({reason}); run `slimsweep sync {args.experiment}` once "
            "it takes them, then pick again"
        ) from None
    if parent is None or logged:
        console.print(
            f"MLflow lacked {'this sweep' if parent is None else f'{logged} of its trial runs'}: "
            f"{logged} trial runs written from the study first (as `slimsweep sync` does)",
            soft_wrap=True,
        )


def _bench(args: argparse.Namespace) -> int:
    from search.timing_cli import bench, plan_bench

    plan = plan_bench(
        Path(args.model),
        kind=args.target,
        threads=args.threads,
        batch_size=args.batch_size,
        device_id=args.device_id,
        url=args.url,
        token_file=args.token_file,
    )
    _check_target(plan.spec)  # the start check `run` does too
    result = bench(plan, max_seconds=args.max_seconds)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    from rich.table import Table

    spec, stats = plan.spec, result.stats
    table = Table(title=f"{plan.model.name} on {plan.kind} (threads {spec.threads}, batch {spec.batch_size})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in stats.metrics().items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("repeats", str(stats.repeats))
    table.add_row("stable", "yes" if stats.stable else "NO (noisy: re-run on a quieter machine)")
    console = _console()
    if plan.batch_note:
        console.print(plan.batch_note)
    console.print(table)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from search.timing_cli import compare_models

    done = compare_models(
        [Path(m) for m in args.models],
        baseline=Path(args.baseline) if args.baseline else None,
        threads=args.threads,
        batch_size=args.batch_size,
        max_seconds=args.max_seconds,
        kind=args.target,
    )
    if args.json:
        print(json.dumps(done.to_dict(), indent=2))
        return 0
    from rich.table import Table

    result, settings, note = done.comparison, done.settings, done.batch_note
    table = Table(
        title=f"side by side on {done.kind} (threads {settings.threads}, batch {settings.batch_size}): speed-up = "
        f"median of per-round {result.baseline.name} p50 / model p50"
    )
    for column in ("model", "p50 ms", "speed-up", "95% CI", "vs baseline"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for m in result.models:
        table.add_row(
            m.name,
            f"{m.p50_ms:.4f}",
            f"{m.speedup:.3f}x",
            f"{m.speedup_ci_low:.3f} - {m.speedup_ci_high:.3f}",
            "baseline" if m is result.baseline else m.verdict(),
        )
    console = _console()
    if note:
        console.print(note)
    console.print(table)
    tight = (
        f"every interval within ±{settings.target_rel_ci:.0%}"
        if result.tight
        else f"NOT every interval reached ±{settings.target_rel_ci:.0%} (time cap): re-run with a larger "
        "--max-seconds or on a quieter machine"
    )
    console.print(f"{result.rounds} rounds in {result.seconds:.1f} s; {tight}")
    return 0


def _agent(args: argparse.Namespace) -> int:
    from search.timing_cli import serve_agent

    serve_agent(
        port=args.port,
        host=args.host,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_model_mb=args.max_model_mb,
        max_memory_mb=args.max_memory_mb,
        queue=args.queue,
    )
    return 0


def _swept_study(exp: Experiment, args: argparse.Namespace) -> Any:
    """The stored study of an experiment that has run far enough to have a baseline (for front and pick)."""
    from search.study import baseline, open_study

    _require_study(exp)
    study = open_study(exp)
    if baseline(study) is None:
        raise SlimsweepError(f"the study {exp.name!r} has no finished trial yet; run `slimsweep run {args.experiment}`")
    return study


def _require_study(exp: Experiment) -> None:
    """Refuse an experiment whose study does not exist (a misspelt name), before anything would create it."""
    from search.stored import require

    require(exp)


if __name__ == "__main__":
    sys.exit(main())
