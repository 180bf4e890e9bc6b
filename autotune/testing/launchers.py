"""A launcher without processes, for tests of anything that runs trials.

:class:`FakeLauncher` stands in for :class:`autotune.launch.ProcessLauncher` (or
:class:`~autotune.launch.WarmLauncher`): instead of starting a worker process it returns a
canned :class:`~autotune.launch.WorkerOutcome`, or a synthetic one computed from the
:class:`~autotune.config.TrialConfig`. Its results are shaped exactly
like a real worker's ``status: ok`` result (see ``autotune/launch/_worker.py`` and
``autotune/profiling/loop.py``) so that storage and study logic can be tested in
milliseconds.

The numbers it returns are made up: they are NOT measurements. Every result says so in its
``warnings``, its ``versions`` and its energy ``model`` string.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.config import TrialConfig
from autotune.launch import WorkerOutcome

#: Said in every synthetic result, so nothing downstream can mistake it for a measurement.
SYNTHETIC_NOTE = "synthetic result from autotune.testing.FakeLauncher; not a measurement"

#: Which trial configs a fake outcome applies to: a predicate on the config, or the
#: 0-based indices of the launcher's calls.
Selector = Callable[[TrialConfig], bool] | Collection[int] | None

#: Canned outcomes: the i-th call gets the i-th (calls past the end are computed), or a
#: function of the config and the call's 0-based index (``None``: computed).
Outcomes = Sequence[WorkerOutcome] | Callable[[TrialConfig, int], WorkerOutcome | None] | None

FAIL_KINDS = ("crash", "timeout", "killed")
INFEASIBLE_KINDS = ("oom", "unsupported", "nan_loss")


def _selected(selector: Selector, config: TrialConfig, index: int) -> bool:
    if selector is None:
        return False
    if callable(selector):
        return bool(selector(config))
    return index in selector


def _config_seed(config: TrialConfig, seed: int) -> int:
    """A stable seed per trial config (Python's ``hash`` is salted per process)."""
    return zlib.crc32(repr((sorted(config.knobs().items()), config.seed, seed)).encode())


def synthetic_step_time_s(config: TrialConfig) -> float:
    """Noise-free step time: a fixed overhead plus per-sample work split over threads."""
    threads = config.threads or os.cpu_count() or 1
    return float(1e-3 + config.batch_size * 4e-5 / threads ** 0.8)


def synthetic_accuracy(config: TrialConfig) -> float:
    """Accuracy peaking at a learning rate of 1e-3, lower the further away (log scale)."""
    distance = abs(math.log10(config.learning_rate) + 3.0)
    return float(min(1.0, max(0.0, 0.95 - 0.15 * distance)))


@dataclass
class FakeLauncher:
    """A drop-in for ``ProcessLauncher`` that computes outcomes instead of measuring.

    Args:
        outcomes: canned outcomes, returned before anything else is considered: a
            sequence (the i-th call gets the i-th; later calls are computed) or a
            function of the config and the 0-based call index (``None``: computed).
        infeasible: configs (predicate, or call indices) that come back ``infeasible``
            with ``infeasible_kind`` (default ``oom``), like a worker that ran out of memory.
        fail: configs (predicate, or call indices) that come back ``fail`` with
            ``fail_kind`` (``crash``, ``timeout`` or ``killed``).
        sleep_s: seconds each call sleeps (to test timeouts).
        steps: measured steps per trial (at least the budget's ``window_min_steps``).
        noise: relative standard deviation of the seeded noise on step times.
        seed: base seed of the noise.
        with_energy: ``False`` reports no energy (source ``none``).
        device_peak_memory_bytes: reported device peak (``None``: CPU, no device memory).
        contended: report foreign CPU load during every window.
    """

    infeasible: Selector = None
    fail: Selector = None
    outcomes: Outcomes = None
    infeasible_kind: str = "oom"
    fail_kind: str = "crash"
    sleep_s: float = 0.0
    steps: int = 32
    noise: float = 0.02
    seed: int = 0
    with_energy: bool = True
    device_peak_memory_bytes: int | None = None
    contended: bool = False
    calls: list[TrialConfig] = field(default_factory=list, init=False)
    call_times: list[float] = field(default_factory=list, init=False)
    #: memory probes asked for (:mod:`autotune._memory_probe`; not counted in ``calls``)
    probes: list[TrialConfig] = field(default_factory=list, init=False)
    closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.fail_kind not in FAIL_KINDS:
            raise ValueError(f"fail_kind must be one of {FAIL_KINDS}, got {self.fail_kind!r}")
        if self.infeasible_kind not in INFEASIBLE_KINDS:
            raise ValueError(f"infeasible_kind must be one of {INFEASIBLE_KINDS}, "
                             f"got {self.infeasible_kind!r}")

    def close(self) -> None:
        """Nothing to release (part of the launcher interface)."""
        self.closed = True

    def run(self, config: TrialConfig) -> WorkerOutcome:
        """Same interface as :meth:`autotune.launch.ProcessLauncher.run`."""
        if config.memory_probe is not None:
            return self._probe(config)
        index = len(self.calls)
        self.calls.append(config)
        self.call_times.append(time.monotonic())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        canned = self._canned(config, index)
        if canned is not None:
            return canned
        if _selected(self.fail, config, index):
            return self._fail(config)
        if _selected(self.infeasible, config, index):
            return self._infeasible()
        result = self.raw_result(config)
        wall = self.sleep_s + result["process_start_s"] + result["import_s"] + \
            result["data_s"] + result["setup_s"] + result["warmup_s"] + result["window_s"]
        return WorkerOutcome("ok", result=result, wall_s=wall)

    # -- outcomes ----------------------------------------------------------------------------

    def _canned(self, config: TrialConfig, index: int) -> WorkerOutcome | None:
        if self.outcomes is None:
            return None
        if callable(self.outcomes):
            return self.outcomes(config, index)
        return self.outcomes[index] if index < len(self.outcomes) else None

    def ok_outcome(self, config: TrialConfig, **result: Any) -> WorkerOutcome:
        """An ``ok`` outcome with the synthetic result for ``config``, ``result`` keys
        replaced (e.g. ``window_s=2.0``): a start for canned outcomes."""
        return WorkerOutcome("ok", result={**self.raw_result(config), **result}, wall_s=1.0)

    def _probe(self, config: TrialConfig) -> WorkerOutcome:
        """A memory probe: a batch fits unless the ``infeasible`` predicate (with
        ``infeasible_kind`` ``oom``) selects it; call indices select no probe step."""
        import dataclasses

        from autotune._memory_probe import MAX_S, bisect, reply

        self.probes.append(config)

        def fits(batch: int) -> bool:
            trial = dataclasses.replace(config, batch_size=batch, memory_probe=None)
            return not (self.infeasible_kind == "oom" and callable(self.infeasible)
                        and self.infeasible(trial))

        result = reply(bisect(fits, dict(config.memory_probe or {}),
                              time.perf_counter() + MAX_S))
        ran_out = result["status"] == "infeasible"
        return WorkerOutcome(result["status"], result=result,
                             failure_kind="oom" if ran_out else None,
                             reason="memory probe", wall_s=0.5)

    def _infeasible(self) -> WorkerOutcome:
        reasons = {
            "oom": "out of memory: synthetic allocation failure (FakeLauncher)",
            "unsupported": "synthetic unsupported combination (FakeLauncher)",
            "nan_loss": "synthetic non-finite loss (FakeLauncher)",
        }
        reason = reasons[self.infeasible_kind]
        result = {"status": "infeasible", "failure_kind": self.infeasible_kind,
                  "reason": reason}
        return WorkerOutcome("infeasible", result=result, failure_kind=self.infeasible_kind,
                             reason=reason, wall_s=0.5)

    def _fail(self, config: TrialConfig) -> WorkerOutcome:
        if self.fail_kind == "timeout":
            limit = config.budget.trial_seconds
            return WorkerOutcome("fail", failure_kind="timeout", wall_s=limit,
                                 reason=f"killed after exceeding its {limit:g} s budget",
                                 traceback="")
        if self.fail_kind == "killed":
            return WorkerOutcome("fail", failure_kind="killed", wall_s=0.5,
                                 reason="worker killed by SIGKILL (the kernel's OOM killer "
                                        "sends this)", traceback="")
        return WorkerOutcome(
            "fail", failure_kind="crash", wall_s=0.5,
            reason="RuntimeError: synthetic crash (FakeLauncher)",
            traceback='Traceback (most recent call last):\n  File "fake", line 1\n'
                      "RuntimeError: synthetic crash (FakeLauncher)\n")

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        """A worker's ``status: ok`` result dict for ``config`` (synthetic numbers)."""
        rng = np.random.default_rng(_config_seed(config, self.seed))
        base = synthetic_step_time_s(config)
        n = max(self.steps, config.budget.window_min_steps)
        steps = base * (1.0 + self.noise * np.abs(rng.standard_normal(n)))
        warmup = base * np.linspace(3.0, 1.05, 10)
        step_times = [float(x) for x in steps]
        window_s = float(sum(step_times))
        threads = config.threads or os.cpu_count() or 1
        train = config.mode == "train"
        budget_steps = config.budget.train_epochs * 10 if train else None
        watts = 10.0
        energy = {
            "energy_j": window_s * threads * watts if self.with_energy else None,
            "source": "estimated" if self.with_energy else "none",
            "window_s": window_s,
            "samples": 2 if self.with_energy else 0,
            "model": f"process CPU time x {watts:g} W per busy core ({SYNTHETIC_NOTE})"
            if self.with_energy else "",
            "fallback_reason": "" if self.with_energy else "no energy source (fake)",
        }
        generations: list[list[float]] = []
        if config.mode == "generate":
            # each step is a batch of requests: the first token takes a fifth of the step
            # (the prefill), the rest share the remainder evenly
            n_new = max(2, config.new_tokens)
            for t in step_times:
                ttft = t / 5
                gap = (t - ttft) / (n_new - 1)
                generations.append([ttft + i * gap for i in range(n_new)])
        return {
            "step_times_s": step_times,
            "generations": generations,
            "warmup_step_times_s": [float(x) for x in warmup],
            "samples": config.batch_size * n,
            "window_s": window_s,
            "warmup_s": float(warmup.sum()),
            "first_step_s": float(warmup[0]) * 3,
            "eval_s": 0.001,
            "stop_reason": "ci_met",
            # every warm-up and window step trains; a short window is topped up to the budget
            "train_steps": max(budget_steps or 0, len(warmup) + n),
            "budget_steps": budget_steps,
            "accuracy": synthetic_accuracy(config),
            "energy": energy,
            "warnings": [SYNTHETIC_NOTE],
            "process_start_s": 0.05,
            "import_s": 0.4,
            "data_s": 0.01,
            "setup_s": 0.02,
            "status": "ok",
            "threads": threads,
            "model": {"name": "fake", "parameters": 1000, "flops_per_sample": 2000},
            "versions": {"fake": "0 (synthetic)"},
            "peak_rss_bytes": 200 * 2**20 + config.batch_size * 2**20,
            "device_peak_memory_bytes": self.device_peak_memory_bytes,
            "peak_rss_scope": "trial",
            "environment": {"OMP_NUM_THREADS": str(threads)},
            "worker": {"pid": 0, "trial": 1, "warm": False},
            "remeasured": 0,
            "pruned": None,
            "screened": None,
            "step_comm_s": [],
            "contention": {"available": True, "contended": self.contended,
                           "foreign_fraction": 0.3 if self.contended else 0.0,
                           "reason": "fake contention" if self.contended else ""},
        }


def on_calls(*indices: int) -> frozenset[int]:
    """Selector for the launcher's ``indices``-th calls (0-based), e.g. ``fail=on_calls(3)``."""
    return frozenset(indices)


__all__ = ["FAIL_KINDS", "INFEASIBLE_KINDS", "SYNTHETIC_NOTE", "FakeLauncher", "Outcomes",
           "Selector", "on_calls", "synthetic_accuracy", "synthetic_step_time_s"]
