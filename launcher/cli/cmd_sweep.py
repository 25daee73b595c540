"""`leo-launch sweep`: many trials as one (seeds × experiments × --grid, or --random).

`leo-launch sweep --exp a,b --seeds N [--grid k=v1,v2 | --random k=lo:hi[:log] --trials N]
[--parallel N] JOB OPTIONS` records the sweep (launcher.backends.sweeps) and submits
its trials, each an ordinary job named `<sweep>-<i>` and labelled with its sweep,
through the backend as `submit` does; then `sweep resume|status|list|cancel|report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from launcher.cli.options import BACKENDS, add_job_arguments, print_warnings, spec_from_args
from launcher.errors import UsageError
from launcher.spec.fields import flag_of

HELP = "run many trials as one: seeds × experiments × a grid or random search; status, report"

_REQUIRED = ("experiment", "accelerator", "cards")  # required to start a sweep, not by its subcommands
DEFAULT_PARALLEL = 2
EXAMPLES = """\
  leo-launch sweep --exp mini_1shot,mini_5shot --seeds 3 --accel cpu --cards 2 --data-url ./embeddings
  leo-launch sweep --exp mini_5shot --random outer_lr=1e-4:1e-2:log --trials 8 --accel cpu --cards 2 --data-url ./embeddings
  leo-launch sweep status leo-sweep-mini-1shot
  leo-launch sweep report leo-sweep-mini-1shot -o markdown"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, positional_file=False)  # positionals are the ACTIONs
    for action in parser._actions:
        if action.dest in _REQUIRED:
            action.required = False
    parser.set_defaults(seed=None)
    for action in parser._actions:
        if action.dest == "experiment":
            action.help = "experiments, comma-separated (e.g. mini_1shot,mini_5shot)"
        if action.dest == "name":
            action.help = "sweep name (default: leo-sweep-<first experiment>); trials are <name>-<i>"
        if action.dest == "seed":
            action.help = argparse.SUPPRESS  # --seeds says which
    group = parser.add_argument_group("sweep")
    group.add_argument("--seeds", default="1", metavar="N|S1,S2,...",
                       help="seeds: a count N (0..N-1, default 1) or a list")
    group.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="experiment field and its values (parsed as --set parses them), repeatable")
    group.add_argument("--random", action="append", default=[], metavar="KEY=LO:HI[:log]",
                       help="draw KEY uniformly (or log-uniformly) per configuration, repeatable")
    group.add_argument("--trials", type=int, metavar="N", help="configurations drawn by --random")
    group.add_argument("--random-seed", type=int, default=0, metavar="S",
                       help="seed of the --random draws (default 0)")
    group.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                       help=f"trials running at once (default {DEFAULT_PARALLEL})")
    group.add_argument("--yes", action="store_true", help="allow more trials than the safety bound")
    group.add_argument("--detach", action="store_true",
                       help="return after the first trials are submitted (continue: sweep resume NAME)")
    group.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="k8s, local or auto (as submit)")
    group.add_argument("--dry-run", action="store_true", help="print every trial's plan; create nothing")

    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    resume = sub.add_parser("resume", help="submit what is missing and keep --parallel trials running")
    resume.add_argument("sweep", metavar="NAME")
    resume.add_argument("--detach", action="store_true", help="return after one round of submissions")
    status = sub.add_parser("status", help="one line per trial, then the summary")
    status.add_argument("sweep", metavar="NAME")
    sub.add_parser("list", help="the sweeps recorded on this machine")
    cancel = sub.add_parser("cancel", help="submit no more trials and cancel the submitted ones")
    cancel.add_argument("sweep", metavar="NAME")
    report = sub.add_parser("report", help="the summary table (and --png: validation curves)")
    report.add_argument("sweep", metavar="NAME|URL",
                        help="a sweep of this machine, or its published folder <train_url>/<name>")
    report.add_argument("--png", metavar="FILE", help="write every trial's validation curve to FILE")
    report.add_argument("-o", "--output", choices=("table", "markdown", "csv", "json"), default="table",
                        help="format of the summary (default table)")
    for command in (resume, status, cancel, report):
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks of failures")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action is None:
        return start(args)
    return {"resume": resume, "status": status, "list": list_sweeps, "cancel": cancel,
            "report": report}[action](args)


# ------------------------------------------------------------------ start


def start(args: argparse.Namespace) -> int:
    from launcher.backends import sweeps
    from launcher.cli.cmd_submit import backend_for
    from launcher.spec import sweep as sw

    missing = [flag_of(d) for d in _REQUIRED if getattr(args, d) is None]
    if missing:
        raise UsageError(f"sweep needs {', '.join(missing)} (or an action: resume, status, list, cancel, report)")
    if args.seed is not None:
        raise UsageError("sweep takes --seeds, not --seed")
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    experiments = sw.parse_list(args.experiment, "--exp")
    name = args.name or f"leo-sweep-{experiments[0].replace('_', '-')}"
    swept: set[str] = set()
    grid = sw.parse_grid(args.grid, swept)
    ranges = sw.parse_random(args.random, swept)
    for item in args.overrides or ():
        key = item.partition("=")[0].strip()
        if key in swept:
            raise UsageError(f"--set {key}: the key is swept (--grid/--random)")
    trials = sw.expand(name, experiments, sw.parse_seeds(args.seeds), grid, ranges, args.trials,
                       args.random_seed)
    if len(trials) > sw.MAX_TRIALS_WITHOUT_YES and not args.yes:
        raise UsageError(f"the sweep has {len(trials)} trials (more than {sw.MAX_TRIALS_WITHOUT_YES}): "
                         "add --yes to submit them")
    specs = [trial_spec(args, name, trial) for trial in trials]
    if specs[0].data_url is None and not args.dry_run:
        raise UsageError("sweep needs --data-url: the embeddings (s3://, obs://, file:// or a path)")
    backend = backend_for(args, specs[0])
    plans = [backend.plan(spec) for spec in specs]  # every trial checked before any is submitted
    if args.dry_run:
        for plan in plans:
            sys.stdout.write(plan.text())
        return 0
    if sweeps.record_path(name).exists():
        raise UsageError(f"sweep {name!r} exists (sweep status {name}; choose another --name)")
    taken = [t.name for t in trials if sweeps.phase_of(backend, t.name) is not None]
    if taken:
        raise UsageError(f"job {taken[0]!r} exists already: choose another sweep --name")
    sweep = sweeps.Sweep(name=name, backend=backend.name, parallel=args.parallel, trials=trials,
                         specs={p.spec.name: p.spec.to_dict() for p in plans},
                         train_url=plans[0].spec.train_url, namespace=plans[0].spec.namespace,
                         context=args.context)
    # before the local record: a failure leaves nothing; with the trials' own storage settings
    published = sweeps.publish(sweep, plans[0].spec.storage.options(progress=False))
    sweeps.save(sweep)
    print(f"sweep {name}: {len(trials)} trial(s), at most {args.parallel} at once"
          + (f"; record published to {published}/{sweeps.SWEEP_FILE}" if published else ""))
    print_warnings(plans[0].spec, pods=backend.runs_pods)
    try:
        sweeps.drive(sweep, backend, out=sys.stdout, err=sys.stderr, wait=False)
    except Exception:
        if not sweeps.load(name).submitted:  # e.g. pre-flight refused the first trial: no sweep
            sweeps.record_path(name).unlink()
        raise
    return carry_on(sweep, backend, detach=args.detach)


def trial_spec(args: argparse.Namespace, sweep: str, trial):
    values = argparse.Namespace(**vars(args))
    values.experiment, values.name, values.seed = trial.experiment, trial.name, trial.seed
    values.overrides = [*(args.overrides or ()), *(f"{k}={v}" for k, v in trial.params)]
    return dataclasses.replace(spec_from_args(values), sweep=sweep)


def carry_on(sweep, backend, *, detach: bool) -> int:
    from launcher.backends import sweeps

    try:
        sweeps.drive(sweep, backend, out=sys.stdout, err=sys.stderr, wait=not detach)
    except KeyboardInterrupt:
        print(f"leo-launch: sweep {sweep.name} stopped submitting; its running trials go on "
              f"(continue: leo-launch sweep resume {sweep.name})", file=sys.stderr)
        return 130
    sweep = sweeps.load(sweep.name)
    if detach:
        left = len(sweep.pending())
        print(f"sweep {sweep.name}: {len(sweep.submitted)} submitted, {left} waiting"
              + (f" (submit them as trials end: leo-launch sweep resume {sweep.name})" if left else ""))
        return 0
    print_summary(sweep, None)
    return 0


# ------------------------------------------------------------------ the other actions


def _backend(sweep):
    from launcher.backends import get_backend

    return get_backend(sweep.backend, context=sweep.context, namespace=sweep.namespace)


def resume(args: argparse.Namespace) -> int:
    from launcher.backends import sweeps

    sweep = sweeps.load(args.sweep)
    if sweep.cancelled:
        raise UsageError(f"sweep {sweep.name} was cancelled")
    return carry_on(sweep, _backend(sweep), detach=args.detach)


def status(args: argparse.Namespace) -> int:
    from launcher.backends import sweeps
    from launcher.outputs.report import percent
    from launcher.outputs.sweep_summary import load_trials

    sweep = sweeps.load(args.sweep)
    backend = _backend(sweep)
    results = load_trials(sweep.train_url, sweep.trials) if sweep.train_url else []
    keys = list(dict.fromkeys(k for t in sweep.trials for k, _ in t.params))
    rows = [["TRIAL", "EXPERIMENT", *[k.upper() for k in keys], "SEED", "PHASE", "STEPS", "BEST-VAL",
             "META-TEST"]]
    for i, trial in enumerate(sweep.trials):
        if trial.name in sweep.submitted:
            phase = sweeps.phase_of(backend, trial.name) or sweeps.GONE
        else:
            phase = "Cancelled" if sweep.cancelled else "Waiting"
        report = results[i].report if results else None
        steps = "-"
        if report is not None and report.step is not None:
            steps = f"{report.step}/{report.target_steps}" if report.target_steps else str(report.step)
        best = "-" if report is None or report.best is None else percent(report.best.accuracy, report.best.ci95)
        test = "-" if report is None or report.meta_test is None else \
            percent(report.meta_test.accuracy, report.meta_test.ci95)
        params = dict(trial.params)
        rows.append([trial.name, trial.experiment, *[params.get(k, "-") for k in keys], str(trial.seed),
                     phase, steps, best, test])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print()
    print_summary(sweep, results or None)
    return 0


def print_summary(sweep, results) -> None:
    from launcher.outputs.sweep_summary import load_trials, summarise, table

    if not sweep.train_url:
        print(f"sweep {sweep.name}: its trials publish nothing (no train_url), so there is no summary")
        return
    results = results if results is not None else load_trials(sweep.train_url, sweep.trials)
    print(table(summarise(results)))


def list_sweeps(args: argparse.Namespace) -> int:
    from launcher.backends import sweeps

    rows = [["NAME", "BACKEND", "TRIALS", "SUBMITTED", "PARALLEL", "STATE"]]
    for sweep in sweeps.load_all():
        state = "cancelled" if sweep.cancelled else "submitting" if sweep.pending() else "all submitted"
        rows.append([sweep.name, sweep.backend, str(len(sweep.trials)), str(len(sweep.submitted)),
                     str(sweep.parallel), state])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cancel(args: argparse.Namespace) -> int:
    from launcher.backends import sweeps

    sweep = sweeps.load(args.sweep)
    for line in sweeps.cancel(sweep, _backend(sweep)):
        print(line)
    print(f"sweep {sweep.name}: cancelled ({len(sweep.submitted)} trial(s) cancelled, "
          f"{len(sweep.pending())} never submitted); its outputs stay under its train_url")
    return 0


def report(args: argparse.Namespace) -> int:
    import json

    from launcher.backends import sweeps
    from launcher.outputs import sweep_summary as ss
    from launcher.outputs.report import check_png_target
    from launcher.spec.names import looks_like_url

    png = check_png_target(args.png) if args.png else None
    sweep = sweeps.load_published(args.sweep) if looks_like_url(args.sweep) else sweeps.load(args.sweep)
    if not sweep.train_url:
        raise UsageError(f"sweep {sweep.name}: its trials publish nothing (no train_url)")
    results = ss.load_trials(sweep.train_url, sweep.trials)
    groups = ss.summarise(results)
    if png is not None:
        png = ss.write_png(results, png, sweep.name)
    if args.output == "json":
        print(json.dumps({"sweep": sweep.name, "groups": ss.to_json(groups),
                          **({"png": str(png)} if png else {})}, indent=2))
        return 0
    print({"table": ss.table, "markdown": ss.markdown, "csv": ss.to_csv}[args.output](groups))
    if png is not None:
        print(f"validation curves → {png}", file=sys.stderr)
    return 0
