"""The quickstart through the Python API: create (or reuse) a study, run it, print its front.

    python examples/quickstart.py [N_TRIALS]

Stores into sqlite:///studies/autotune.db (relative to the working directory), the same
database the CLI uses, so `autotune study show quickstart-api` shows the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import autotune

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def main(n_trials: int = 6) -> None:
    study = autotune.create_study("quickstart-api", SPACE, seed=0, exist_ok=True)
    for result in study.optimize(n_trials=n_trials):
        print(f"trial {result.number}: {result.state}", result.failure_kind or "",
              {k: result.metrics.get(k) for k in ("throughput_sps", "accuracy")})
    print("Pareto front:")
    for point in study.pareto_front():
        print(f"  trial {point.trial_number}: {point.values} with {point.config}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
