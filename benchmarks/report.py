"""Write docs/BENCHMARKS.md and its plots (docs/benchmarks/*.png) from scratch, on the machine it runs on.

Usage: python benchmarks/report.py [--quick] [--work DIR] [--keep-cache] [--reuse] [--only SECTION ...]
       (`make bench` runs the full report, `make bench-quick` the subset)

Sections: the machine; the quickstart; what the search finds on MNIST (joint against each knob alone, random and a
hand-chained pipeline, at equal student epochs, at accuracy bars; benchmarks/equalcompute.py); where a
trial's time goes; and, where their modules are in this checkout, the tabular sampler benchmark
(benchmarks/tabular.py), NAS-Bench-201 replayed (benchmarks/nasbench201.py), latency honesty
(benchmarks/honesty.py) and cheap-then-full (benchmarks/curves.py).
Lines a section writes as a quote ("> ...") are its headline: collected at the top of the report and into
README.md between the bench-headline markers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: import the project from this checkout

from benchmarks import machine, scales, sweeps  # noqa: E402

DOC = ROOT / "docs" / "BENCHMARKS.md"
PNG_DIR = ROOT / "docs" / "benchmarks"
README = ROOT / "README.md"
MARK_BEGIN, MARK_END = "<!-- bench-headline: written by benchmarks/report.py -->", "<!-- /bench-headline -->"


@dataclass(frozen=True)
class Section:
    """One part of the report: a module under benchmarks/ and how to call its `section`."""

    module: str
    title: str
    call: Callable[..., str]
    optional: bool = False  # another module's, possibly absent from this checkout


@dataclass(frozen=True)
class Outcome:
    """What one section produced and how long it took."""

    title: str
    text: str
    seconds: float
    module: str = ""  # the section's module under benchmarks/ (its estimate in benchmarks/scales.py)
    ran: bool = True  # False: left out by --only


def _own(module: str) -> Callable[..., str]:
    def call(png_dir: Path, quick: bool, work: Path, env: dict[str, str]) -> str:
        mod = importlib.import_module(f"benchmarks.{module}")
        kwargs = {"work": work, "env": env} if "env" in mod.section.__code__.co_varnames else {"work": work}
        return mod.section(png_dir, quick, **kwargs)

    return call


def _theirs(module: str) -> Callable[..., str]:
    def call(png_dir: Path, quick: bool, work: Path, env: dict[str, str]) -> str:
        return importlib.import_module(f"benchmarks.{module}").section(png_dir, quick)

    return call


SECTIONS = (
    Section("quickstart", "The quickstart", _own("quickstart")),
    Section("realdata", "What the search finds on real data", _own("realdata")),
    Section("stages", "Where a trial's time goes", _own("stages")),
    # Replayed into the report's folder: runs kept in docs/benchmarks/ came from the code of their day.
    Section("tabular", "How fast the search gets there (tabular benchmark)", _own("tabular"), optional=True),
    Section("nasbench201", "An outside benchmark (NAS-Bench-201)", _theirs("nasbench201"), optional=True),
    Section("honesty", "How honest the latency is", _theirs("honesty"), optional=True),
    Section("curves", "Cheap-then-full (learning curves)", _theirs("curves"), optional=True),
)


def present(module: str) -> bool:
    """Whether benchmarks/<module>.py is in this checkout."""
    return (ROOT / "benchmarks" / f"{module}.py").is_file()


def run_section(s: Section, png_dir: Path, quick: bool, work: Path, env: dict[str, str]) -> Outcome:
    """Run one section; a missing optional module or a failure becomes a stated line, never a missing report."""
    start = time.perf_counter()
    if s.optional and not present(s.module):
        text = f"## {s.title}\n\nSkipped: benchmarks/{s.module}.py is not in this checkout.\n"
    else:
        try:
            text = s.call(png_dir, quick, work, env)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' hours of work
            tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
            text = f"## {s.title}\n\nThis section failed: {type(exc).__name__}: {exc} ({tb}).\n"
    return Outcome(s.title, text, time.perf_counter() - start, s.module)


def headline(outcomes: list[Outcome]) -> list[str]:
    """The quoted lines ("> ...") of every section, in order, as a list."""
    return [f"* {line[2:]}" for o in outcomes for line in o.text.splitlines() if line.startswith("> ")]


def reused_note(work: Path) -> str:
    """What a --reuse report read back: how many sweeps, and the driver time they took when they ran."""
    runs = [r for r in (sweeps.load_run(p.parent) for p in sorted(work.rglob("run.json"))) if r is not None]
    minutes = sum(r.seconds for r in runs) / 60
    return (
        f"The {len(runs)} sweeps were read back from their earlier run in the same folder (`--reuse`); they took "
        f"{minutes:.1f} minutes of driver wall clock when they ran, from {min(r.started for r in runs):%H:%M} "
        f"to {max(r.ended for r in runs):%H:%M} UTC. Timings taken side by side were taken again."
    )


def scale_lines(quick: bool) -> list[str]:
    """The report's "Scales" part: what each section ran (benchmarks/scales.py), and how long it should take."""
    s = scales.of(quick)
    estimate = sum(s.minutes.values())
    return [
        "## Scales",
        "",
        f"What this report ran ({'quick' if quick else 'full'} scales, `benchmarks/scales.py`; chosen to fit "
        f"{'15 minutes' if quick else '2 hours'} on 2 idle cores, estimated {estimate:.0f} minutes there; the "
        "minutes each section took are at the end):",
        "",
        *s.lines(),
        "",
    ]


def minutes_table(outcomes: list[Outcome], quick: bool, total: float) -> list[str]:
    """How long each section took, beside the estimate its scale was chosen by (2 idle cores)."""
    est = scales.of(quick).minutes
    lines = ["## How long each section took", "", "| section | minutes | estimated on 2 idle cores |", "|---|---|---|"]
    lines += [
        f"| {o.title} | {o.seconds / 60:.1f} | {est[o.module]:.1f} |"
        if o.module in est
        else f"| {o.title} | {o.seconds / 60:.1f} | - |"
        for o in outcomes
    ]
    # The estimate of what ran: an --only report is not held against the sections it left out.
    estimate = sum(est.values()) - sum(est.get(o.module, 0.0) for o in outcomes if not o.ran)
    return lines + [f"| **whole report** | **{total / 60:.1f}** | **{estimate:.0f}** |", ""]


def document(outcomes: list[Outcome], quick: bool, total: float, command: str, when: datetime, reused: str = "") -> str:
    """The whole BENCHMARKS.md."""
    scope = (
        "**This is the quick subset** (`make bench-quick`): fewer trials, one seed, smaller training; "
        "`make bench` runs the full report."
        if quick
        else "This is the full report (`make bench`)."
        if command == "make bench"
        else f"**The MNIST searches ran at another scale than the full report's** (`{command}`; the scale is "
        "stated in their section); `make bench` runs the full report."
    )
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {when:%Y-%m-%d %H:%M} UTC, in {total / 60:.1f} minutes on the machine "
        f"below. Nothing here is typed by hand: every figure, table and plot comes from that run. {scope}"
        + (f" {reused}" if reused else ""),
        "",
        "## Headline",
        "",
        *(headline(outcomes) or ["* (no section produced a headline)"]),
        "",
        machine.section(),
        *scale_lines(quick),
    ]
    lines += [o.text for o in outcomes]
    lines += minutes_table(outcomes, quick, total)
    return "\n".join(lines)


def update_readme(lines: list[str], path: Path = README) -> bool:
    """Replace the text between the bench-headline markers in README.md; False when the markers are absent."""
    text = path.read_text()
    pattern = re.compile(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END), re.S)
    if not pattern.search(text):
        return False
    body = "\n".join([MARK_BEGIN, *lines, MARK_END])
    path.write_text(pattern.sub(lambda _: body, text))
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the documented subset (at most ~15 minutes on 2 cores)")
    parser.add_argument("--work", type=Path, help="folder for the sweeps' outputs (default: a new temporary folder)")
    parser.add_argument("--keep-cache", action="store_true", help="reuse $SLIMSWEEP_CACHE instead of a fresh one")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read back sweeps that already finished in --work instead of running them again",
    )
    parser.add_argument("--only", nargs="*", help="run only these sections (module names); the report says so")
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="the MNIST searches' seeds instead of the scale's (the report says so)"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="slimsweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sweeps.REUSE["finished"] = args.reuse
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if not args.keep_cache:
        env["SLIMSWEEP_CACHE"] = str(work / "cache")  # a fresh teacher cache: teacher training is part of the cost
    PNG_DIR.mkdir(parents=True, exist_ok=True)
    for old in PNG_DIR.glob("*.png"):
        old.unlink()  # from scratch: no plot of an earlier run survives
    command = "make bench-quick" if args.quick else "make bench"
    if args.seeds:
        from benchmarks import realdata

        realdata.OVERRIDE["seeds"] = tuple(args.seeds)
        flags = (" --quick" if args.quick else "") + " --seeds " + " ".join(map(str, args.seeds))
        command = "python benchmarks/report.py" + flags
    when, start, outcomes = datetime.now(timezone.utc), time.perf_counter(), []
    for s in SECTIONS:
        if args.only and s.module not in args.only:
            left = f"## {s.title}\n\nNot run in this report (`--only`).\n"
            outcomes.append(Outcome(s.title, left, 0.0, s.module, ran=False))
            continue
        print(f"[report] {s.module} ...", flush=True)
        outcomes.append(run_section(s, PNG_DIR, args.quick, work, env))
        print(f"[report] {s.module} done in {outcomes[-1].seconds:.0f} s", flush=True)
    total = time.perf_counter() - start
    DOC.write_text(document(outcomes, args.quick, total, command, when, reused_note(work) if args.reuse else ""))
    readme = update_readme(
        [
            *headline(outcomes),
            "",
            f"Full figures, the machine and the commands: "
            f"[docs/BENCHMARKS.md](docs/BENCHMARKS.md) (written by `{command}`).",
        ]
    )
    print(
        f"[report] wrote {DOC} in {total / 60:.1f} min; sweeps in {work}; README headline "
        f"{'updated' if readme else 'not updated (no markers)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
