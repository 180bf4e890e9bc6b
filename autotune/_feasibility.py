"""Feasibility pre-screen: the sampler stops proposing configurations that cannot run.

Optuna's TPE learns little from trials that could not run (recorded as FAIL it spent 88 of
100 trials on out-of-memory configurations; as complete with a violated constraint, 16).
Proposals that are known in advance not to run are better never made. A proposal is known
infeasible when:

* the driver's pre-checks rule it out without a worker (a backend not installed, a
  precision the device lacks, a knob the backend refuses: :func:`autotune._run.precheck`);
* the memory model says it does not fit (the simulator's exact model, the built-in gpt's:
  :func:`autotune._run.predicted_out_of_memory`);
* the study itself has seen it: an out-of-memory trial at batch ``B`` on a (backend,
  device, precision, execution) means every larger batch there runs out too, unless a
  larger batch has run there (memory grows with the batch); after a group's first such
  trial, one bounded memory probe (:mod:`autotune._memory_probe`) finds the largest batch
  that fits there, stored on the study.

:class:`FeasibleSampler` wraps the study's sampler and draws again (up to
:data:`MAX_DRAWS` times) while its proposal is known infeasible; it proposes jointly for
the whole space, so the check sees whole configurations, also during a sampler's random
start-up (where Optuna samples each knob on its own).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from autotune._coverage import START_UP_ATTR, Coverage, arm_key
from autotune._memory_probe import group_of

if TYPE_CHECKING:
    from autotune.space import SearchSpace

_logger = logging.getLogger(__name__)

#: Proposals drawn per trial before the last one is taken as it is (and recorded
#: infeasible if it is: the sampler learns from it).
MAX_DRAWS = 32
#: Of those, drawn from the study's sampler; the rest uniformly.
BASE_DRAWS = 4

#: Start-up claims of one process are made one at a time (read the study, then claim);
#: workers in other processes can still, rarely, claim the same arm at the same moment.
_CLAIM_LOCK = threading.Lock()

#: ``(params) -> why it cannot run, or None``
Verdict = Callable[[Mapping[str, Any], Any], "str | None"]




def _key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


class OutOfMemoryBoundaries:
    """The smallest batch seen out of memory per group, above the largest batch seen to
    run there (a group's boundary is dropped when a larger batch ran: memory then did not
    decide)."""

    def __init__(self) -> None:
        self.oom: dict[tuple[str, ...], int] = {}
        self.ran: dict[tuple[str, ...], int] = {}
        #: groups a memory probe has bisected already (their doubt is within 5 %)
        self.probed: set[tuple[str, ...]] = set()

    def observe(self, group: tuple[str, ...], batch: int, out_of_memory: bool) -> None:
        """Record one finished trial of ``group`` at ``batch``."""
        table = self.oom if out_of_memory else self.ran
        if out_of_memory:
            table[group] = min(batch, table.get(group, batch))
        else:
            table[group] = max(batch, table.get(group, batch))

    def reason(self, group: tuple[str, ...], batch: int) -> str | None:
        """Why ``batch`` will not fit in ``group`` (``None``: not known)."""
        limit = self.oom.get(group)
        if limit is None or batch < limit or self.ran.get(group, 0) >= limit:
            return None
        return f"batch {batch} >= {limit}, which ran out of memory on {group[1]}"

    def probe(self, group: tuple[str, ...]) -> int | None:
        """The batch to try next in ``group`` when a proposal hits its boundary: the
        geometric middle of the largest batch that ran and the smallest that ran out, so
        each out-of-memory trial halves (in log scale) the batches still in doubt instead
        of creeping down one batch at a time."""
        limit = self.oom.get(group)
        if limit is None:
            return None
        ran = self.ran.get(group, 1)
        if group in self.probed:  # bisected already: the largest batch known to fit
            return ran
        return max(ran, int((ran * limit) ** 0.5))

    def observe_probe(self, group: tuple[str, ...], fits: int | None, oom: int) -> None:
        """Record what a memory probe of ``group`` found."""
        if fits is not None:
            self.observe(group, fits, False)
        self.observe(group, oom, True)
        self.probed.add(group)


class FeasibleSampler:
    """An Optuna sampler that proposes only configurations not known to be infeasible,
    by drawing from ``base`` again.

    ``space``: the study's search space (its configurations are checked whole);
    ``seed``/``budget``: as the trials will run them; ``fixed``: knobs the base sampler
    fixes (a job pinned to its device), kept on every proposal. The first trials cover
    the space's arms (:mod:`autotune._coverage`).
    """

    def __init__(self, base: Any, space: SearchSpace, *, seed: int = 0,
                 budget: Any = None, fixed: Mapping[str, Any] | None = None) -> None:
        self.base = base
        self.space = space
        self.seed = seed
        self.budget = budget
        #: knobs the base sampler fixes (a worker pinned to its device)
        self.fixed = dict(fixed or {})
        self.rejected = 0
        self.coverage = Coverage(space, seed)
        self._random: Any = None
        self._seen: set[tuple[tuple[str, Any], ...]] = set()
        # what completed trials taught, kept across proposals: a completed trial does not
        # change, so each is read once (the driver's work per trial stays flat as the
        # study grows); trials other workers complete are new numbers, read when they come
        self._found = OutOfMemoryBoundaries()
        self._read: set[int] = set()

    # -- what makes a proposal infeasible ------------------------------------------------------

    def _boundaries(self, study: Any) -> OutOfMemoryBoundaries:
        import optuna

        from autotune._memory_probe import stored_probes
        from autotune._run import trial_config

        # what memory probes found (one per group, after its first out-of-memory trial)
        for probe in stored_probes(study.user_attrs):
            fits = probe.get("fits")
            self._found.observe_probe(tuple(probe["group"]),
                                      None if fits is None else int(fits), int(probe["oom"]))
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.number in self._read:
                continue
            self._read.add(t.number)
            self._seen.add(_key(t.params))
            if "batch_size" not in t.params:
                continue
            kind = t.user_attrs.get("failure_kind")
            if kind not in (None, "oom"):
                continue
            config = trial_config(self.space, t.params, seed=self.seed)
            self._found.observe(group_of(config), int(t.params["batch_size"]), kind == "oom")
        return self._found

    def _config(self, params: Mapping[str, Any]) -> Any:
        from autotune._run import trial_config

        return trial_config(self.space, params, seed=self.seed, budget=self.budget)

    def _memory_reason(self, config: Any, boundaries: OutOfMemoryBoundaries | None,
                       ) -> str | None:
        from autotune._run import predicted_out_of_memory

        reason = predicted_out_of_memory(config)
        if reason is None and boundaries is not None:
            reason = boundaries.reason(group_of(config), config.batch_size)
        return reason

    def why_infeasible(self, params: Mapping[str, Any],
                       boundaries: OutOfMemoryBoundaries | None = None) -> str | None:
        """Why the configuration ``params`` cannot run (``None``: not known)."""
        from autotune._run import precheck

        config = self._config(params)
        return precheck(config) or self._memory_reason(config, boundaries)

    def largest_fitting_batch(self, params: Mapping[str, Any],
                              boundaries: OutOfMemoryBoundaries | None) -> int | None:
        """The largest batch up to ``params``'s that is not known to run out of memory
        with the rest of ``params`` (memory grows with the batch: a bisection); ``None``
        when the space's smallest batch does not fit either."""
        spec = self.space.param("batch_size")
        if spec is None or spec.kind not in ("int",) or spec.low is None:
            return None
        step = int(spec.step or 1)
        low, high = int(spec.low), int(params["batch_size"])

        def fits(batch: int) -> bool:
            config = self._config({**params, "batch_size": batch})
            return self._memory_reason(config, boundaries) is None

        if not fits(low):
            return None
        # invariant: fits(low); the answer is in [low, high)
        while high - low > step:
            middle = low + (high - low) // (2 * step) * step
            if fits(middle):
                low = middle
            else:
                high = middle
        return low

    # -- Optuna's sampler interface -------------------------------------------------------------

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        """The whole space: proposals are made, and checked, jointly."""
        return {n: d for n, d in self.space.distributions().items() if not d.single()}

    def _propose(self, sampler: Any, study: Any, trial: Any,
                 search_space: dict[str, Any]) -> dict[str, Any]:
        """``sampler``'s proposal for the whole space (knob by knob where its relative
        proposal leaves some out, as in a random start-up)."""
        base_space = sampler.infer_relative_search_space(study, trial)
        params = dict(sampler.sample_relative(study, trial, base_space))
        for name, distribution in search_space.items():
            if name not in params:
                params[name] = sampler.sample_independent(study, trial, name, distribution)
        return params

    def sample_relative(self, study: Any, trial: Any,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        """The base sampler's proposal; a batch that would not fit is lowered to the
        largest that does (what the sampler wanted, as close as it can run); a proposal
        that cannot run at all is drawn again, from the base sampler a few times, then
        uniformly (the base sampler may keep proposing one region)."""
        import optuna

        boundaries = self._boundaries(study)
        with _CLAIM_LOCK:  # jobs of one run ask from threads: one claim at a time
            covering = self._cover(study, trial, search_space, boundaries)
        if covering is not None:
            return covering
        params: dict[str, Any] = {}
        for draw in range(MAX_DRAWS):
            sampler = self.base if draw < BASE_DRAWS else self._uniform(optuna)
            # the uniform fallback knows nothing of a worker's pinned device
            params = {**self._propose(sampler, study, trial, search_space), **self.fixed}
            if "batch_size" in search_space:
                params["batch_size"] = self._fitting(params, boundaries)
            reason = self.why_infeasible(params, boundaries)
            if reason is None and _key(params) in self._seen and draw < MAX_DRAWS - 1:
                # a lowered batch can land where a trial already ran: nothing to learn
                reason = "measured already"
            if reason is None:
                return params
            self.rejected += 1
            _logger.debug("not proposing %s: %s", params, reason)
        return params

    def _cover(self, study: Any, trial: Any, search_space: dict[str, Any],
               boundaries: OutOfMemoryBoundaries) -> dict[str, Any] | None:
        """The start-up's next arm (:mod:`autotune._coverage`) at a batch that fits, or
        ``None`` when every arm that can run has been measured. An arm is found unable
        to run only after :data:`BASE_DRAWS` draws of the other knobs are all refused."""
        # knobs given by a worker's pin or by a trial queued with some of them
        given = {**self.fixed, **trial.system_attrs.get("fixed_params", {})}
        if all(name in given for name in search_space):  # a retry, a confirmation
            return None
        for arm in self.coverage.pending(study, trial.number, given):
            for _ in range(BASE_DRAWS):
                params = {**self._propose(self.base, study, trial, search_space), **arm,
                          **given}
                if "batch_size" in search_space and "batch_size" not in given:
                    first = self.coverage.first_batch(params, search_space["batch_size"])
                    params["batch_size"] = self._fitting({**params, "batch_size": first},
                                                         boundaries)
                reason = self.why_infeasible(params, boundaries)
                if reason is None:
                    _logger.info("start-up: measuring arm %s once before the search", arm)
                    # the claim is stored before the trial's parameters are, so another
                    # worker asking now sees the arm taken (Optuna's own samplers write
                    # through the storage this way)
                    study._storage.set_trial_user_attr(trial._trial_id, START_UP_ATTR, arm)
                    return params
            _logger.debug("start-up: arm %s cannot run: %s", arm, reason)
            self.coverage.dead.add(arm_key(arm, self.coverage.names))
        return None

    def _fitting(self, params: dict[str, Any], boundaries: OutOfMemoryBoundaries) -> Any:
        """``params``'s batch, or, when it is known not to fit, the largest below it not
        known to run out of memory; below a limit the study learned (no memory model),
        the probe's next batch, so each out-of-memory trial halves (in log scale) the
        batches in doubt instead of creeping down one at a time."""
        config = self._config(params)
        if self._memory_reason(config, boundaries) is None:
            return params["batch_size"]
        spec = self.space.param("batch_size")
        if spec is not None and spec.kind == "categorical":
            smaller = sorted(b for b in spec.choices if b < params["batch_size"])
            for batch in reversed(smaller):
                if self._memory_reason(self._config({**params, "batch_size": batch}),
                                       boundaries) is None:
                    return batch
            return params["batch_size"]
        fitting = self.largest_fitting_batch(params, boundaries)
        if fitting is None or spec is None or spec.low is None:
            return params["batch_size"]
        learned = boundaries.probe(group_of(config))
        return fitting if learned is None else max(min(fitting, learned), int(spec.low))

    def _uniform(self, optuna: Any) -> Any:
        if self._random is None:
            self._random = optuna.samplers.RandomSampler(seed=self.seed)
        return self._random

    def sample_independent(self, study: Any, trial: Any, param_name: str,
                           param_distribution: Any) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def with_base(self, base: Any, fixed: Mapping[str, Any] | None = None) -> Any:
        """The same pre-screen around another sampler (a device-pinning wrapper of this
        one's base, which fixes the knobs ``fixed``: the pre-screen stays outermost, so it
        sees whole configurations)."""
        return feasible_sampler(base, self.space, seed=self.seed, budget=self.budget,
                                fixed=fixed)


@functools.cache
def _sampler_class() -> type:
    import optuna

    class FeasibleOptunaSampler(FeasibleSampler, optuna.samplers.BaseSampler):
        """:class:`FeasibleSampler` as an Optuna ``BaseSampler``."""

    return FeasibleOptunaSampler


def feasible_sampler(base: Any, space: SearchSpace, *, seed: int = 0,
                     budget: Any = None, fixed: Mapping[str, Any] | None = None) -> Any:
    """``base`` wrapped in :class:`FeasibleSampler`, as an Optuna ``BaseSampler`` (Optuna
    is imported only when a study runs)."""
    sampler: Any = _sampler_class()(base, space, seed=seed, budget=budget, fixed=fixed)
    return sampler


__all__ = ["MAX_DRAWS", "FeasibleSampler", "OutOfMemoryBoundaries", "feasible_sampler"]
