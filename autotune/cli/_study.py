"""``autotune study``: create, run, list, show, delete, export, import and report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from autotune.cli._exitcodes import EXIT_ERROR
from autotune.cli._render import (
    _fmt,
    _front_json,
    _print_front,
    _print_history,
    _print_scaling,
    _print_trials,
    _scaling_json,
    _trial_line,
)


def _cmd_create(args: argparse.Namespace, console: Any) -> int:
    import autotune

    study = autotune.create_study(args.name, args.space, storage=args.storage,
                                  sampler=args.sampler, seed=args.seed, exist_ok=args.exist_ok)
    if args.json:
        print(json.dumps(study.summary(), indent=2))
    else:
        console.print(f"study {study.name!r} ready in {study.storage.url} "
                      f"({study.space.workload}, {study.space.mode}, "
                      f"{len(study.space.distributions())} knobs searched, "
                      f"objectives: {', '.join(study.space.objective_names)})")
    return 0


def _cmd_run(args: argparse.Namespace, console: Any) -> int:
    launcher = _prestarted(args)
    try:
        study = _load_waiting(args.name, args.storage, args.wait)
        return _run_loaded(study, args, console, launcher)
    finally:
        if launcher is not None:
            launcher.close()


def _prestarted(args: argparse.Namespace) -> Any:
    """A warm launcher whose one worker is already starting, for a run whose trials all
    share that worker (one job, warm workers): the framework's import (a second for
    torch) overlaps the rest of the start-up (Optuna, the sampler). ``None`` when trials
    may need other workers, the backend is not installed, a first trial on this machine
    will measure its GEMM peak (a worker importing beside it would disturb that), or the
    study cannot be read yet (the load that follows says why, in one line)."""
    if args.fresh_workers or args.jobs != 1 or getattr(args, "ray", None) or args.devices:
        return None
    from autotune.backends import BACKENDS
    from autotune.launch import WarmLauncher
    from autotune.launch._warm import shared_worker_key
    from autotune.profiling.peak import peak_missing
    from autotune.space import parse_space
    from autotune.storage import AutotuneStorage

    store = AutotuneStorage(args.storage)
    try:
        row = store.get_study(args.name) if store.exists else None
        if row is None:
            return None
        space = parse_space(json.loads(row.space_json), check_files=False,
                            source=f"study {row.study_name!r}")
        key = shared_worker_key(space)
        if key is None:
            return None
        backend, device = key[0], key[1]
        entry = BACKENDS.get(backend)
        if entry is None or not entry.is_installed():
            return None
        if any(peak_missing(device, precision, threads)
               for precision in _choices(space, "precision", "fp32")
               for threads in _choices(space, "threads", None)):
            return None
    except Exception:  # whatever it is, the load that follows reports it in one line
        return None
    finally:
        store.close()
    launcher = WarmLauncher()
    launcher.prestart(key)
    return launcher


def _choices(space: Any, name: str, default: Any) -> list[Any]:
    """The values knob ``name`` of ``space`` can take (a range: its two ends)."""
    param = space.param(name)
    if param is None:
        return [default]
    if param.choices:
        return list(param.choices)
    return [int(param.low), int(param.high)] if param.kind == "int" else [default]


def _cmd_worker(args: argparse.Namespace, console: Any) -> int:
    from autotune._jobs import check_storage_for_workers

    study = _load_waiting(args.name, args.storage, args.wait)
    check_storage_for_workers(study, allow_sqlite=args.i_know_sqlite_is_local)
    return _run_loaded(study, args, console)


def _load_waiting(name: str, storage: str | None, wait_s: float | None) -> Any:
    """The study, trying again for ``wait_s`` seconds while the storage is unreachable
    (``None``: one attempt, so an unreachable server is one line at once)."""
    import autotune
    from autotune.storage._retry import is_transient, retry_budget_s

    deadline = time.monotonic() + (wait_s or 0.0)
    while True:
        try:
            study = autotune.load_study(name, storage=storage)
        except autotune.StorageError as e:
            if wait_s is None or time.monotonic() >= deadline or not is_transient(e):
                raise
            time.sleep(1.0)
            continue
        # reached once: from here on a lost connection is ridden out (the server restarts)
        study.storage.retry_s = retry_budget_s()
        return study


def _run_loaded(study: Any, args: argparse.Namespace, console: Any,
                prestarted: Any = None) -> int:
    from autotune.launch import ProcessLauncher, WarmLauncher
    from autotune.space import load_space
    from autotune.study import missing_backends_warning

    if args.space:
        study.check_space(load_space(args.space))
    on_ray = getattr(args, "ray", None)
    # refused in one line before any progress (Ray places its workers itself)
    study.plan_jobs(1 if on_ray else args.jobs, args.devices)
    missing = study.check_backends()  # none installed here: an error before any trial
    if missing:
        print(f"autotune: warning: {missing_backends_warning(study.name, missing)}",
              file=sys.stderr)
    n_trials, timeout = args.n_trials, args.timeout
    if n_trials is None and timeout is None:
        n_trials = 10
    show_progress = not args.quiet and not args.json
    launcher = ProcessLauncher() if args.fresh_workers and args.jobs == 1 else prestarted
    factory = (lambda cores: ProcessLauncher(cpus=cores)) if args.fresh_workers else \
        (lambda cores: WarmLauncher(cpus=cores))
    run = {"launcher": launcher, "recheck_every": args.recheck_every, "jobs": args.jobs,
           "devices": args.devices, "launcher_factory": factory}
    if on_ray:
        from autotune.launch._ray import RayRequest, default_request, run_on_ray

        request = default_request(study)
        request = RayRequest(
            cpus=args.ray_cpus if args.ray_cpus is not None else request.cpus,
            gpus=args.ray_gpus if args.ray_gpus is not None else request.gpus,
            resources=dict(args.ray_resource) if args.ray_resource else request.resources)

        def optimize(**kwargs: Any) -> list[Any]:
            return run_on_ray(study, on_ray, jobs=args.jobs, n_trials=kwargs["n_trials"],
                              timeout=kwargs["timeout"], recheck_every=args.recheck_every,
                              request=request, devices=args.devices,
                              callbacks=kwargs.get("callbacks"))
    else:
        def optimize(**kwargs: Any) -> list[Any]:
            return study.optimize(**kwargs, **run)  # type: ignore[no-any-return]
    start = time.monotonic()
    results: list[Any] = []

    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        # markup=False: the study name and the best values are shown as written
        progress = Progress(TextColumn("{task.description}", style="bold", markup=False),
                            BarColumn(), TextColumn("{task.fields[status]}", markup=False),
                            TimeElapsedColumn(),
                            console=console, transient=False)
        total = float(n_trials) if n_trials is not None else float(timeout or 1)
        task = progress.add_task(f"{study.name}", total=total, status="starting")

        def on_trial(result: Any) -> None:
            results.append(result)
            progress.console.print(_trial_line(result), highlight=False, markup=False)
            summary = study.summary()
            best = [f"{name} {_fmt(value)}" for name, value in summary["best"].items()
                    if value is not None]
            status = f"front {summary['front_size']} | " + (
                ", ".join(best) if best else "no feasible yet")
            # confirmations of screened trials come on top of the asked trials
            asked = sum(1 for r in results if r.confirms is None)
            confirmed = len(results) - asked
            done = asked if n_trials is not None else \
                min(time.monotonic() - start, timeout or 0)
            progress.update(task, completed=done, status=status,
                            description=f"{study.name} {asked}"
                                        + (f"/{n_trials}" if n_trials else "") + " trials"
                                        + (f" + {confirmed} confirmed" if confirmed else ""))

        with progress:
            optimize(n_trials=n_trials, timeout=timeout, callbacks=[on_trial])
    else:
        results = optimize(n_trials=n_trials, timeout=timeout)
    if args.json:
        out = _front_json(study)
        out["run"] = {"trials": len(results), "seconds": round(time.monotonic() - start, 1)}
        print(json.dumps(out, indent=2, default=str))
        return 0
    elapsed = time.monotonic() - start
    console.print(f"{len(results)} trial(s) in {elapsed:.0f} s "
                  f"({elapsed / max(1, len(results)):.1f} s per trial)")
    front = study.pareto_front()
    if front:
        _print_front(console, study, front)
    else:
        console.print(f"no feasible trial yet; `autotune study show {study.name} --all` "
                      "says why each trial was infeasible")
    if args.jobs > 1 or on_ray:  # several workers: who did what, at which pace
        _print_fleet(console, study)
    return 0


def _cmd_list(args: argparse.Namespace, console: Any) -> int:
    import autotune

    studies = autotune.list_studies(storage=args.storage)
    summaries = [s.summary() for s in studies]
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
        return 0
    if not summaries:
        console.print("no studies yet; create one with `autotune study create NAME --space "
                      "search_spaces/quickstart.yaml`")
        return 0
    from rich.table import Table

    table = Table(title="Studies", title_justify="left")
    for col in ("name", "workload", "mode", "ok", "infeasible", "fail", "front", "best",
                "created"):
        table.add_column(col)
    for s in summaries:
        best = ", ".join(f"{k} {_fmt(v)}" for k, v in s["best"].items())
        table.add_row(s["name"], s["workload"], s["mode"], str(s["trials"]["ok"]),
                      str(s["trials"]["infeasible"]), str(s["trials"]["fail"]),
                      str(s["front_size"]), best, s["created_at"])
    console.print(table)
    return 0


def _cmd_show(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune._data_parallel import searches_data_parallel

    study = autotune.load_study(args.name, storage=args.storage)
    if args.live:
        return _show_live(study, console, args.interval)
    if args.json:
        out = _front_json(study)
        if args.workers:
            from autotune._fleet import fleet_status

            out["fleet"] = fleet_status(study).to_dict()
        kinds = _fronts_by_kind(study)
        if len(kinds) > 1:
            out["fronts_by_machine"] = {k: [p.trial_number for p in v]
                                        for k, v in kinds.items()}
        if args.all:
            out["trials"] = [vars(t) for t in study.trials()]
        if searches_data_parallel(study):
            out["scaling"] = _scaling_json(study)
        if args.history:
            out["hypervolume"] = study.hypervolume()
            out["history"] = [
                {"trial": h.trial_number, "front": h.front, "hypervolume": h.hypervolume,
                 "reference": h.reference, "energy_sources": h.energy_sources,
                 "created_at": h.created_at.isoformat(timespec="seconds")}
                for h in study.front_history()]
        print(json.dumps(out, indent=2, default=str))
        return 0
    s = study.summary()
    console.print(f"study {s['name']!r}: workload {s['workload']} ({s['mode']}), "
                  f"sampler {s['sampler']}, trials ok {s['trials']['ok']} / screened "
                  f"{s['trials']['screened']} / infeasible "
                  f"{s['trials']['infeasible']} / pruned {s['trials']['pruned']} / failed "
                  f"{s['trials']['fail']}"
                  + (f"; constraints: {', '.join(s['constraints'])}" if s["constraints"] else ""),
                  highlight=False, markup=False)
    if args.all:
        _print_trials(console, study, study.trials())
    front = study.pareto_front()
    if front:
        _print_front(console, study, front)
        leads = "; ".join(f"{metric}: {lead['backend']} on {lead['device']} "
                          f"({_fmt(lead['value'])}, trial {lead['trial']})"
                          for metric, lead in s["leaders"].items())
        console.print(f"leads: {leads}", highlight=False, markup=False)
    else:
        console.print("no feasible trial yet: run `autotune study run "
                      f"{study.name}` (or see --all for why trials were infeasible)")
    if searches_data_parallel(study):
        _print_scaling(console, study)
    kinds = _fronts_by_kind(study)
    if len(kinds) > 1:  # a mixed fleet: where each kind of machine is best
        for kind, points in kinds.items():
            console.print(f"front on {kind}: trials "
                          f"{', '.join(str(p.trial_number) for p in points)}",
                          highlight=False, markup=False)
    if args.workers:
        _print_fleet(console, study)
    if args.history:
        _print_history(console, study, study.front_history())
    return 0


def _fronts_by_kind(study: Any) -> dict[str, list[Any]]:
    from autotune._fleet import fronts_by_machine_kind

    return fronts_by_machine_kind(study)


def _fleet_table(study: Any) -> Any:
    from rich.table import Table

    from autotune._fleet import fleet_status

    fleet = fleet_status(study)
    table = Table(title=f"Workers of {study.name!r}: {fleet.trials_per_min:g} trials/min "
                        f"(last 10 min); by device: "
                        + (", ".join(f"{d} {n}" for d, n in fleet.devices.items()) or "none"),
                  title_justify="left")
    for col in ("worker", "machine", "finished", "running", "failed", "devices",
                "trials/min", "last seen (UTC)", "state"):
        table.add_column(col)
    for w in fleet.workers:
        state = (f"silent (no heartbeat for {fleet.grace_s} s)" if w.silent else
                 "running" if w.running else "idle")
        table.add_row(w.worker, w.machine, str(w.finished), str(w.running), str(w.failed),
                      ", ".join(f"{d} {n}" for d, n in w.devices.items()),
                      f"{w.trials_per_min:g}", w.last_seen or "-", state)
    return table


def _print_fleet(console: Any, study: Any) -> None:
    console.print(_fleet_table(study))


def _show_live(study: Any, console: Any, interval: float) -> int:
    """Workers and the study's summary, redrawn every ``interval`` seconds until Ctrl-C
    (which ends it with exit code 0: watching is not an error)."""
    from rich.console import Group
    from rich.live import Live

    def frame() -> Any:
        s = study.summary()
        t = s["trials"]
        best = ", ".join(f"{k} {_fmt(v)}" for k, v in s["best"].items() if v is not None)
        head = (f"study {s['name']!r}: ok {t['ok']}, screened {t['screened']}, infeasible "
                f"{t['infeasible']}, pruned "
                f"{t['pruned']}, failed {t['fail']}, running {t['running']}; front "
                f"{s['front_size']}"
                + (f" | {best}" if best else ""))
        return Group(head, _fleet_table(study))

    try:
        with Live(frame(), console=console, refresh_per_second=4, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame())
    except KeyboardInterrupt:
        return 0


def _cmd_delete(args: argparse.Namespace, console: Any) -> int:
    import autotune

    study = autotune.load_study(args.name, storage=args.storage)
    if not args.yes:
        if not sys.stdin.isatty():
            raise autotune.StudyError(f"refusing to delete {args.name!r} without --yes "
                                      "(standard input is not a terminal)")
        n = len(study.trials())
        answer = input(f"Delete study {args.name!r} and its {n} trial(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            console.print("not deleted")
            return EXIT_ERROR
    autotune.delete_study(args.name, storage=args.storage)
    if args.json:
        print(json.dumps({"deleted": args.name}))
    else:
        console.print(f"deleted study {args.name!r}")
    return 0


def _cmd_export(args: argparse.Namespace, console: Any) -> int:
    from autotune.transfer import export_study

    # Nothing is written to --output unless the whole export succeeded.
    text = export_study(args.name, storage=args.storage, format=args.format,
                        output=args.output)
    if args.output is None:
        sys.stdout.write(text)
    else:
        console.print(f"exported study {args.name!r} ({args.format}) to {args.output}",
                      highlight=False, markup=False)
    return 0


def _cmd_import(args: argparse.Namespace, console: Any) -> int:
    from pathlib import Path

    from autotune.transfer import import_study

    source = sys.stdin if args.file == "-" else Path(args.file)
    with import_study(source, storage=args.storage, name=args.name) as study:
        s = study.summary()
        if args.json:
            print(json.dumps({**s, "storage": study.storage.url}, indent=2, default=str))
            return 0
        t = s["trials"]
        console.print(f"imported study {s['name']!r} into {study.storage.url}: "
                      f"{sum(t.values())} trial(s) (ok {t['ok']}, infeasible "
                      f"{t['infeasible']}, failed {t['fail']}), front size {s['front_size']}",
                      highlight=False, markup=False)
    return 0


def _cmd_report(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune.exceptions import AutotuneError

    with autotune.load_study(args.name, storage=args.storage) as study:
        try:
            from autotune.dashboard.report import write_report
        except ImportError as e:  # plotly is an extra: say how to get it, in one line
            raise AutotuneError(str(e)) from e
        # A study name may hold '/' or other characters a file name cannot.
        default = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.name)
        path = write_report(study, args.output or f"{default}-report.html")
    print(path)
    return 0
