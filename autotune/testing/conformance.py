"""The backend conformance suite: one set of checks every backend must pass.

Use it from pytest by subclassing::

    from autotune.testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mypackage.backend:MyBackend"        # or a registered name
        precisions = {"fp32": "float32", "fp16": "float16"}

The checks of one backend share one fresh process, its framework imported once
(frameworks never share one); the out-of-memory check, which leaves its process capped,
gets a process of its own, and teardown runs first, before anything else was built in
that process. What is checked:
the lifecycle in train and infer mode; that the profiler synchronises after every step
before it reads the clock; that the parameter count and FLOPs counted on the model are
deterministic and right for a known MLP (also after structured pruning; a backend whose
framework has no FLOP counter reports ``None`` with the reason); that unstructured pruning really
zeroes the stated fraction of the weights and keeps them zero through optimizer steps;
that each precision really changes the compute dtype; that running out of memory raises
``OutOfMemoryError``; and that teardown frees memory (repeated cycles do not grow).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from typing import Any, ClassVar

#: Resident memory may grow this much across repeated setup/teardown cycles (allocator
#: caches, lazily imported modules), beyond which a backend is leaking models.
TEARDOWN_SLACK_BYTES = 64 * 2**20


#: The checks that share one process per backend, in the order they run there.
SHARED_CHECKS = ("teardown", "lifecycle", "sync", "size", "pruning", "precision")


def run_check(backend: str, check: str, timeout_s: float = 600, **kwargs: Any) -> Any:
    """Run one check in a fresh process; return its JSON result."""
    argv = [sys.executable, "-m", "autotune.testing._conformance_runner", backend, check]
    if kwargs:
        argv.append(json.dumps(kwargs))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    line = next((ln for ln in proc.stdout.splitlines()
                 if ln.startswith("AUTOTUNE-CONFORMANCE ")), None)
    if proc.returncode != 0 or line is None:
        raise AssertionError(f"conformance check {check!r} on {backend!r} failed "
                             f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("AUTOTUNE-CONFORMANCE "))


def run_checks(backend: str, checks: dict[str, dict[str, Any]],
               timeout_s: float = 900) -> dict[str, Any]:
    """Run ``checks`` (name -> keyword arguments) one after another in one fresh process;
    each name maps to its result, or to ``{"error": traceback}`` when it raised."""
    return dict(run_check(backend, "batch", timeout_s, checks=checks))


class BackendConformance:
    """Subclass with ``backend`` (and ``precisions``) set; pytest collects ``Test*`` names."""

    backend: ClassVar[str]
    #: precision knob -> the compute dtype it must produce
    precisions: ClassVar[dict[str, str]] = {"fp32": "float32"}
    #: results of :data:`SHARED_CHECKS` per subclass, run once on first use
    _shared: ClassVar[dict[type, dict[str, Any]]] = {}

    def _result(self, check: str) -> Any:
        """``check``'s result from the backend's shared process (run on first use)."""
        cls = type(self)
        if cls not in BackendConformance._shared:
            kwargs: dict[str, dict[str, Any]] = {name: {} for name in SHARED_CHECKS}
            kwargs["precision"] = {"precisions": self.precisions}
            BackendConformance._shared[cls] = run_checks(self.backend, kwargs)
        result = BackendConformance._shared[cls][check]
        if isinstance(result, dict) and set(result) == {"error"}:
            raise AssertionError(f"conformance check {check!r} on {self.backend!r} "
                                 f"raised:\n{result['error'][-3000:]}")
        return result

    def test_lifecycle(self) -> None:
        result = self._result("lifecycle")
        for mode in ("train", "infer"):
            assert result[mode]["samples"] == [32] * 5, mode
            assert 0.0 <= result[mode]["accuracy"] <= 1.0, mode
            assert result[mode]["info"]["param_count"] > 0

    def test_synchronizes_before_every_clock_read(self) -> None:
        result = self._result("sync")
        assert result["measured"] >= 5
        assert result["steps_not_followed_by_sync"] == 0
        assert result["syncs"] >= result["steps"]

    def test_model_size_and_flops_are_deterministic_and_match_the_workload(self) -> None:
        runs = self._result("size")["runs"]
        assert runs[0]["param_count"] == runs[1]["param_count"]
        assert runs[0]["flops_per_sample"] == runs[1]["flops_per_sample"]
        for run in runs:
            pairs = list(itertools.pairwise(run["expected_widths"]))
            # weights and biases of the dense layers, counted on the built model
            assert run["param_count"] == sum(a * b + b for a, b in pairs), run
            if run["flops_per_sample"] is None:  # no counter: it must say why
                assert run["flops_method"], run
            else:  # a forward pass: 2 FLOPs per multiply-add of each layer; counters that
                # also count element-wise ops (TensorFlow's profiler: bias adds) within 2 %
                expected = 2 * sum(a * b for a, b in pairs)
                assert expected <= run["flops_per_sample"] <= 1.02 * expected, run
        assert runs[2]["param_count"] < runs[0]["param_count"]  # structured really shrinks

    def test_pruning_zeroes_the_stated_fraction(self) -> None:
        result = self._result("pruning")
        for mode in ("train", "infer"):
            assert abs(result[mode]["zero_fraction"] - 0.5) < 0.01, (mode, result[mode])

    def test_precision_changes_the_compute_dtype(self) -> None:
        result = self._result("precision")
        assert result == self.precisions

    def test_out_of_memory_raises_out_of_memory_error(self) -> None:
        result = run_check(self.backend, "oom")
        assert result["raised"] == "OutOfMemoryError", result

    def test_teardown_frees_memory(self) -> None:
        rss = self._result("teardown")["rss"]
        assert rss[-1] - rss[0] < TEARDOWN_SLACK_BYTES, rss
