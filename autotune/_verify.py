"""Confirm a study's recommendation: re-measure the top of the front longer, in isolation.

A study screens many configurations with short trials, mostly on warm workers. That is
what makes a search affordable, and also what makes its ranking fragile: on a noisy
machine a configuration can look fast for one short window (see :mod:`autotune.drift`).
:func:`verify` takes the top ``K`` configurations of the front, measures each again in a
fresh worker process with a window ``scale`` times longer, and says whether the ranking
held: rank correlation between screened and confirmed values, which points moved beyond
their confidence interval, and a verdict.

Verdicts (:attr:`VerifyReport.verdict`):

``held``
    the screened leader is also the confirmed leader, Kendall's tau between the screened
    and confirmed rankings is at least :data:`MIN_KENDALL_TAU` (or undefined: fewer than
    two confirmed points), and no point moved (see below).
``changed``
    any of those failed; :attr:`VerifyReport.reasons` says which.
``inconclusive``
    the screened leader could not be re-measured (its runs failed), so nothing confirms
    the recommendation.

A point *moved* when its confirmed throughput lies outside the 95 % confidence interval
of its screening trial **and** differs from it by more than
:data:`autotune.drift.DRIFT_THRESHOLD` (10 %): the same rule that flags a re-check as
``drifting``. The interval alone is reported too (``outside_ci``), but it is not enough:
it only covers the noise *within* one short window, and two processes of one
configuration routinely differ by a few percent more than that on a shared CPU, so a
verdict built on it alone would almost never say ``held``.

Every confirmation is stored in the ``autotune_rechecks`` table with a reason starting
``verify:``, so it feeds the same stability flags (``stable``/``drifting``) the front,
the summary's leaders and the recommendation use.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune import drift
from autotune._run import launcher_for, run_config
from autotune.config import Budget, TrialConfig
from autotune.exceptions import AutotuneError, StudyError
from autotune.launch import Launcher, ProcessLauncher
from autotune.space import minimum_trial_seconds
from autotune.storage._models import RecheckRow

if TYPE_CHECKING:
    from autotune.study import FrontPoint, Study

#: Screened and confirmed rankings agree well enough at or above this Kendall tau. Among
#: five points, one or two swaps of neighbours (0.8, 0.6) still hold; among three, any
#: swap (0.33) does not: with so few points a swap is most of the ranking.
MIN_KENDALL_TAU = 0.6
#: Prefix of the ``reason`` of every recheck row :func:`verify` stores.
REASON_PREFIX = "verify:"
#: Throughput is what the confidence interval and the drift rule are about.
THROUGHPUT = "throughput_sps"


# -- rank correlation ---------------------------------------------------------------------------


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ascending, tied values sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str]:
    """Kendall's tau-b of paired values, and why it is ``None`` when it is undefined.

    tau-b (not tau-a) so that tied values, e.g. two configurations with the same accuracy,
    neither count as agreement nor as disagreement. Pure Python: K is a handful of points
    and SciPy is not a dependency.
    """
    if len(x) != len(y):
        raise ValueError(f"paired values needed, got {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        return None, f"a rank correlation needs at least 2 confirmed points, got {n}"
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x)
                            * (concordant + discordant + ties_y))
    if denominator == 0:
        return None, "every point has the same value: no ranking to compare"
    return (concordant - discordant) / denominator, ""


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str]:
    """Spearman's rank correlation (Pearson's on average ranks), or ``None`` and why."""
    if len(x) != len(y):
        raise ValueError(f"paired values needed, got {len(x)} and {len(y)}")
    n = len(x)
    if n < 2:
        return None, f"a rank correlation needs at least 2 confirmed points, got {n}"
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None, "every point has the same value: no ranking to compare"
    return sxy / math.sqrt(sxx * syy), ""


# -- the longer budget --------------------------------------------------------------------------


def confirmation_budget(budget: Budget, scale: float) -> Budget:
    """``budget`` with every minimum and maximum of the measured window ``scale`` times
    longer, and a kill limit that leaves room for it.

    ``window_min_steps`` is scaled too: for a slow configuration the step count, not the
    seconds, sets the window's length, and it must be measured longer as well. Warm-up
    and the spread target stay: they end when steps are stable, not after a time.
    ``trial_seconds`` is scaled as a whole (it is only a kill limit: a trial ends when its
    window does), which keeps the screening trial's room for set-up and, in a fresh
    process, framework import; never under :func:`autotune.space.minimum_trial_seconds`.
    """
    longer = dataclasses.replace(
        budget,
        window_min_s=budget.window_min_s * scale,
        window_max_s=budget.window_max_s * scale,
        window_min_steps=math.ceil(budget.window_min_steps * scale),
    )
    seconds = max(budget.trial_seconds * scale,
                  budget.trial_seconds + longer.window_max_s - budget.window_max_s,
                  minimum_trial_seconds(longer))
    return dataclasses.replace(longer, trial_seconds=math.ceil(seconds))


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyRun:
    """One re-measurement of one configuration (one round)."""

    trial_number: int
    round: int  # 1-based
    state: str  # ok | infeasible | fail
    throughput_sps: float | None = None
    throughput_ci_sps: tuple[float, float] | None = None
    value: float | None = None  # the ranking metric, as re-measured
    noise: str | None = None
    spread: float | None = None
    contended: bool = False
    steps_measured: int | None = None
    window_s: float | None = None
    failure_kind: str | None = None
    reason: str = ""
    wall_s: float = 0.0
    summary: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without the full measurement summary)."""
        out = {k: getattr(self, k) for k in (
            "trial_number", "round", "state", "throughput_sps", "value", "noise", "spread",
            "contended", "steps_measured", "window_s", "failure_kind", "reason", "wall_s")}
        out["throughput_ci_sps"] = list(self.throughput_ci_sps) \
            if self.throughput_ci_sps else None
        return out


@dataclass(frozen=True)
class VerifiedPoint:
    """One front configuration: its screening trial against its confirmation.

    ``confirmed_*`` come from the median over the rounds whose window no other process
    disturbed (all successful rounds when every one was disturbed); ``None`` when every
    round failed. ``confirmed_ci_sps`` is the run's own interval with one round, and with
    several the span from the lowest to the highest round interval (so it includes the
    variation between processes). ``ratio`` is confirmed / screened throughput.
    """

    trial_number: int
    config: dict[str, Any]
    budget: dict[str, Any]
    original_rank: int
    original_value: float
    original_throughput_sps: float | None
    original_ci_sps: tuple[float, float] | None
    original_noise: str | None
    original_contended: bool
    confirmed_rank: int | None = None
    confirmed_value: float | None = None
    confirmed_throughput_sps: float | None = None
    confirmed_ci_sps: tuple[float, float] | None = None
    ratio: float | None = None
    outside_ci: bool | None = None
    moved: bool = False
    noise: str | None = None
    contended: bool = False
    drift_verdict: str = "inconclusive"
    reason: str = ""
    runs: tuple[VerifyRun, ...] = ()

    @property
    def confirmed(self) -> bool:
        """Whether at least one round measured it."""
        return self.confirmed_value is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "runs":
                value = [r.to_dict() for r in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found. ``points`` are in screened order (best first)."""

    study: str
    metric: str
    direction: str
    top: int
    requested_top: int
    scale: float
    rounds: int
    points: tuple[VerifiedPoint, ...]
    original_ranking: tuple[int, ...]
    confirmed_ranking: tuple[int, ...]
    kendall_tau: float | None
    spearman_rho: float | None
    correlation_note: str
    verdict: str  # held | changed | inconclusive
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def held(self) -> bool:
        """Whether the screened ranking was confirmed (safe to ship its leader)."""
        return self.verdict == "held"

    @property
    def moved(self) -> list[int]:
        """Trial numbers of the points that moved beyond their confidence interval."""
        return [p.trial_number for p in self.points if p.moved]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what ``autotune verify --json`` prints)."""
        return {
            "study": self.study, "metric": self.metric, "direction": self.direction,
            "top": self.top, "requested_top": self.requested_top, "scale": self.scale,
            "rounds": self.rounds, "verdict": self.verdict, "held": self.held,
            "reasons": list(self.reasons), "notes": list(self.notes),
            "kendall_tau": self.kendall_tau, "spearman_rho": self.spearman_rho,
            "correlation_note": self.correlation_note, "min_kendall_tau": MIN_KENDALL_TAU,
            "original_ranking": list(self.original_ranking),
            "confirmed_ranking": list(self.confirmed_ranking),
            "moved": self.moved,
            "points": [p.to_dict() for p in self.points],
        }


# -- verify -------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    point: FrontPoint
    rank: int
    value: float
    original: dict[str, Any]  # the screening trial's measurement summary
    config: TrialConfig | None
    runs: list[VerifyRun] = field(default_factory=list)
    problem: str = ""  # why it cannot be re-measured at all


def verify(study: Study, top: int = 3, *, scale: float = 3.0,
           launcher: Launcher | None = None, rounds: int = 1, by: str | None = None,
           on_run: Callable[[VerifyRun], None] | None = None) -> VerifyReport:
    """Re-measure the top ``top`` configurations of ``study``'s front and say whether the
    ranking held.

    The front is ranked on ``by`` (an objective's name; default the study's first
    objective) in that objective's direction, best first, ties by trial number; ``top`` is
    clipped to the front's size (with a note). Each configuration runs again with its
    stored knobs, execution and seed, under :func:`confirmation_budget` (``scale`` times
    the measured window), in a fresh worker process (``launcher`` replaces
    :class:`~autotune.launch.ProcessLauncher`, e.g. in tests). With ``rounds`` > 1 the
    configurations are interleaved (A B C A B C: a slow phase of the machine hits all of
    them rather than one) and the median per configuration is kept. ``on_run`` is called
    after every run (progress).

    Each configuration's confirmation is stored as a recheck (reason ``verify: ...``).
    A failed run is reported in its point, not raised; only when every run fails is
    :class:`AutotuneError` raised (after storing the failures). Raises
    :class:`StudyError` for a study without a feasible trial, ``top``/``rounds`` < 1,
    ``scale`` < 1 or an unknown ``by``.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise StudyError(f"top must be a positive integer, got {top!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise StudyError(f"rounds must be a positive integer, got {rounds!r}")
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 1:
        raise StudyError(f"scale must be a number >= 1 (how many times longer than the "
                         f"screening trials), got {scale!r}")
    objectives = dict(study.space.objectives)
    metric = by if by is not None else study.space.objective_names[0]
    if metric not in objectives:
        raise StudyError(f"cannot rank by {metric!r}: not an objective of study "
                         f"{study.name!r}; objectives: {', '.join(objectives)}")
    direction = objectives[metric]
    front = study.pareto_front()
    if front:  # fail on an unwritable storage now, not after minutes of measuring
        study.storage.prepare_for_writing()
    if not front:
        raise StudyError(f"study {study.name!r} has no feasible trial to verify; run it "
                         f"first with `autotune study run {study.name}`")
    best_first = direction == "maximize"
    front.sort(key=lambda p: (-p.values[metric] if best_first else p.values[metric],
                              p.trial_number))
    notes: list[str] = []
    if top > len(front):
        notes.append(f"the front has {len(front)} configuration(s): verifying "
                     f"{len(front)}, not {top}")
    chosen = front[:top]
    candidates = [_candidate(study, p, i + 1, metric) for i, p in enumerate(chosen)]

    with launcher_for(launcher, ProcessLauncher) as active:
        for r in range(1, rounds + 1):
            for c in candidates:  # interleaved: every config once per round
                run = _run(c, active, r, metric, scale)
                c.runs.append(run)
                if on_run is not None:
                    on_run(run)

    after = len(study.trials())
    points = [_verified(c, metric, scale) for c in candidates]
    points = _rank_confirmed(points, best_first)
    for p in points:
        _store(study, p, after, scale, rounds)
    if not any(p.confirmed for p in points):
        failures = "; ".join(f"trial {p.trial_number}: {p.reason}" for p in points)
        raise AutotuneError(f"every re-measurement of study {study.name!r} failed "
                            f"({failures})")
    return _report(study.name, metric, direction, top, scale, rounds, points, notes)


def _candidate(study: Study, point: FrontPoint, rank: int, metric: str) -> _Candidate:
    """A front point with its stored configuration and screening summary."""
    stored = study.storage.measurement(study.id, point.trial_number)
    if stored is None:
        return _Candidate(point, rank, point.values[metric], dict(point.metrics), None,
                          problem="no stored configuration (its autotune record is missing)")
    try:
        config = TrialConfig.from_dict(json.loads(stored.config_json))
    except (TypeError, KeyError, ValueError) as e:  # a row written by another version
        return _Candidate(point, rank, point.values[metric], dict(point.metrics), None,
                          problem=f"stored configuration unreadable: {e}")
    original = json.loads(stored.metrics_json or "{}") or dict(point.metrics)
    return _Candidate(point, rank, point.values[metric], original, config)


def _run(c: _Candidate, launcher: Launcher, round_: int, metric: str,
         scale: float) -> VerifyRun:
    number = c.point.trial_number
    if c.config is None:
        return VerifyRun(number, round_, "fail", failure_kind="unavailable", reason=c.problem)
    config = dataclasses.replace(c.config, budget=confirmation_budget(c.config.budget, scale))
    result = run_config(config, launcher)
    if result.measurement is None:
        return VerifyRun(number, round_, result.state, failure_kind=result.failure_kind,
                         reason=result.reason, wall_s=result.wall_s)
    summary = result.summary()
    ci = summary.get("throughput_ci_sps")
    value = summary.get(metric)
    return VerifyRun(
        number, round_, "ok", throughput_sps=summary.get(THROUGHPUT),
        throughput_ci_sps=(float(ci[0]), float(ci[1])) if ci else None,
        value=None if value is None else float(value), noise=summary.get("noise"),
        spread=summary.get("spread"), contended=bool(summary.get("contended")),
        steps_measured=summary.get("steps_measured"),
        window_s=result.measurement.window_s, wall_s=result.wall_s,
        reason="" if value is not None else f"{metric} not measured: "
        f"{summary.get('missing', {}).get(metric, 'no value')}",
        summary={k: v for k, v in summary.items() if k != "missing"})


_NOISE_ORDER = ("ok", "noisy", "very_noisy")


def _verified(c: _Candidate, metric: str, scale: float) -> VerifiedPoint:
    """Combine a candidate's runs into one confirmation and compare it with screening."""
    original = c.original
    ci = original.get("throughput_ci_sps")
    base = VerifiedPoint(
        trial_number=c.point.trial_number, config=dict(c.point.config),
        budget=dataclasses.asdict(confirmation_budget(c.config.budget, scale))
        if c.config else {},
        original_rank=c.rank, original_value=c.value,
        original_throughput_sps=original.get(THROUGHPUT),
        original_ci_sps=(float(ci[0]), float(ci[1])) if ci else None,
        original_noise=original.get("noise"), original_contended=bool(original.get("contended")),
        runs=tuple(c.runs))
    ok = [r for r in c.runs if r.state == "ok"]
    if not ok:
        kinds = sorted({f"{r.failure_kind}: {r.reason}" for r in c.runs})
        return dataclasses.replace(base, reason="re-measurement failed (" + "; ".join(kinds)
                                                + ")")
    # A disturbed window says little: leave those rounds out while a clean one exists.
    clean = [r for r in ok if not r.contended] or ok
    contended = all(r.contended for r in ok)
    throughputs = [r.throughput_sps for r in clean if r.throughput_sps]
    values = [r.value for r in clean if r.value is not None]
    confirmed_t = statistics.median(throughputs) if throughputs else None
    confirmed_v = statistics.median(values) if values else None
    intervals = [r.throughput_ci_sps for r in clean if r.throughput_ci_sps]
    confirmed_ci = (min(i[0] for i in intervals), max(i[1] for i in intervals)) \
        if intervals else None
    noise = max((r.noise for r in clean if r.noise in _NOISE_ORDER),
                key=_NOISE_ORDER.index, default=None)
    verdict = drift.compare(original, {THROUGHPUT: confirmed_t, "contended": contended})
    ratio = verdict.ratio
    outside = None
    if confirmed_t is not None and base.original_ci_sps is not None:
        lo, hi = base.original_ci_sps
        outside = not (lo <= confirmed_t <= hi)
    # Moved: outside the interval and by more than the drift threshold (the module doc
    # says why the interval alone is not enough); a disturbed confirmation cannot say.
    moved = bool(ratio is not None and not contended
                 and outside is not False  # no interval: the threshold alone decides
                 and abs(ratio - 1.0) > drift.DRIFT_THRESHOLD)
    reason = verdict.reason
    if confirmed_v is None:
        reason = next((r.reason for r in clean if r.reason), f"{metric} not re-measured")
    return dataclasses.replace(
        base, confirmed_value=confirmed_v, confirmed_throughput_sps=confirmed_t,
        confirmed_ci_sps=confirmed_ci, ratio=ratio, outside_ci=outside, moved=moved,
        noise=noise, contended=contended, drift_verdict=verdict.verdict, reason=reason)


def _rank_confirmed(points: list[VerifiedPoint], best_first: bool) -> list[VerifiedPoint]:
    """Give confirmed points their confirmed rank (1 = best; ties by screened rank)."""
    confirmed = sorted((p for p in points if p.confirmed_value is not None),
                       key=lambda p: (-(p.confirmed_value or 0.0) if best_first
                                      else (p.confirmed_value or 0.0), p.original_rank))
    rank = {p.trial_number: i + 1 for i, p in enumerate(confirmed)}
    return [dataclasses.replace(p, confirmed_rank=rank.get(p.trial_number)) for p in points]


def _store(study: Study, p: VerifiedPoint, after: int, scale: float, rounds: int) -> None:
    """One recheck row per configuration: the confirmation as the drift checks see it."""
    ok = [r for r in p.runs if r.state == "ok"]
    state = "ok" if ok else (p.runs[-1].state if p.runs else "fail")
    # The summary of the run nearest the median: real provenance (worker, energy...),
    # with the median throughput and every round's figure on top.
    nearest = min(ok, key=lambda r: abs((r.throughput_sps or 0.0)
                                        - (p.confirmed_throughput_sps or 0.0)), default=None)
    metrics = {**(dict(nearest.summary) if nearest else {}),
               THROUGHPUT: p.confirmed_throughput_sps,
               "throughput_ci_sps": list(p.confirmed_ci_sps) if p.confirmed_ci_sps else None,
               "contended": p.contended,
               "verify": {"scale": scale, "rounds": rounds, "budget": p.budget,
                          "runs": [r.to_dict() for r in p.runs]}}
    study.storage.add_recheck(RecheckRow(
        study_id=study.id, trial_number=p.trial_number, after_trials=after, state=state,
        verdict=p.drift_verdict, ratio=p.ratio, metrics_json=json.dumps(metrics, default=str),
        reason=f"{REASON_PREFIX} {scale:g}x window, {len(ok)}/{len(p.runs)} round(s) ok: "
               f"{p.reason}"))


def _report(name: str, metric: str, direction: str, requested: int, scale: float,
            rounds: int, points: list[VerifiedPoint], notes: list[str]) -> VerifyReport:
    confirmed = [p for p in points if p.confirmed_value is not None]
    # tau over the points both rankings have; values oriented so that higher is better
    sign = 1.0 if direction == "maximize" else -1.0
    screened = [sign * p.original_value for p in confirmed]
    again = [sign * (p.confirmed_value or 0.0) for p in confirmed]
    tau, why = kendall_tau(screened, again)
    rho, _ = spearman_rho(screened, again)
    for p in points:
        if not p.confirmed:
            notes.append(f"trial {p.trial_number} not confirmed: {p.reason}")
        elif p.contended:
            notes.append(f"trial {p.trial_number}: another process used the cores during "
                         "every confirmation run; whether it moved is not judged")
        elif any(r.contended for r in p.runs):
            disturbed = sum(r.contended for r in p.runs)
            notes.append(f"trial {p.trial_number}: {disturbed} of {len(p.runs)} round(s) "
                         "disturbed by another process, left out of the median")
        failed = [r for r in p.runs if r.state != "ok"]
        if p.confirmed and failed:
            notes.append(f"trial {p.trial_number}: {len(failed)} of {len(p.runs)} round(s) "
                         f"failed ({failed[0].failure_kind}: {failed[0].reason})")
        if p.confirmed and p.noise in ("noisy", "very_noisy"):
            notes.append(f"trial {p.trial_number}: confirmation was {p.noise}")
    leader = points[0]
    reasons: list[str] = []
    if not leader.confirmed:
        verdict = "inconclusive"
        reasons.append(f"trial {leader.trial_number}, first when screened, could not be "
                       f"re-measured ({leader.reason})")
    else:
        new_leader = min(confirmed, key=lambda p: p.confirmed_rank or 0)
        if new_leader.trial_number != leader.trial_number:
            reasons.append(
                f"trial {new_leader.trial_number} leads on {metric} when confirmed "
                f"({new_leader.confirmed_value:,.4g} vs {leader.confirmed_value:,.4g} for "
                f"trial {leader.trial_number}, first when screened)")
        if tau is not None and tau < MIN_KENDALL_TAU:
            order = " > ".join(str(p.trial_number) for p in
                               sorted(confirmed, key=lambda p: p.confirmed_rank or 0))
            reasons.append(f"ranking changed: Kendall tau {tau:.2f} < {MIN_KENDALL_TAU} "
                           f"(confirmed order {order})")
        for p in points:
            if p.moved:
                reasons.append(
                    f"trial {p.trial_number} moved: {p.ratio:.2f}x its screened throughput "
                    f"({p.confirmed_throughput_sps:,.0f} vs {p.original_throughput_sps:,.0f} "
                    "samples/s), outside its confidence interval")
        verdict = "changed" if reasons else "held"
    return VerifyReport(
        study=name, metric=metric, direction=direction, top=len(points),
        requested_top=requested, scale=scale, rounds=rounds, points=tuple(points),
        original_ranking=tuple(p.trial_number for p in points),
        confirmed_ranking=tuple(p.trial_number for p in
                                sorted(confirmed, key=lambda p: p.confirmed_rank or 0)),
        kendall_tau=tau, spearman_rho=rho, correlation_note=why, verdict=verdict,
        reasons=tuple(reasons), notes=tuple(notes))


__all__ = ["MIN_KENDALL_TAU", "VerifiedPoint", "VerifyReport", "VerifyRun",
           "confirmation_budget", "kendall_tau", "spearman_rho", "verify"]
