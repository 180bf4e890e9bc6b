"""The autotune exception tree.

Every error autotune raises on purpose derives from :class:`AutotuneError`, so a caller
(and the CLI) can tell "the user gave us something wrong" from a bug::

    AutotuneError
    ├── SpaceError            (also ValueError)  a search-space file is invalid
    ├── StorageError                              a storage URL is malformed or unusable
    ├── StudyError                                study lifecycle misuse
    │   ├── StudyNotFoundError (also KeyError)
    │   ├── StudyExistsError
    │   └── SpaceMismatchError                    run with a space that differs from the stored one
    ├── WorkloadError         (also ValueError)   unknown or malformed workload
    │   └── ModelFactoryError                     the factory or its ModelSpec failed in
    │                                             the worker (trial FAIL, model_error)
    ├── RecommendError        (also ValueError)   recommend: bad objective/condition, no
    │                                             measured trial, nothing feasible
    ├── GateError             (also ValueError)   gate: config file invalid or for another study
    └── TrialError                                raised inside a worker, recorded as trial data
        ├── UnsupportedConfigError                combination the backend/device cannot run
        ├── OutOfMemoryError  (also MemoryError)  the device ran out of memory
        └── NonFiniteLossError                    training diverged (NaN/inf loss)

``TrialError`` subclasses are *data*, not crashes: the study records them as complete,
infeasible trials (see DESIGN.md section 5) and keeps going.
"""

from __future__ import annotations


class AutotuneError(Exception):
    """Root of every error autotune raises deliberately."""


class SpaceError(AutotuneError, ValueError):
    """A search-space file or mapping is invalid.

    The message names the file, the key path, what was given and what is allowed.
    """


class StorageError(AutotuneError):
    """A storage URL is malformed, or the database behind it cannot be used."""


class StudyError(AutotuneError):
    """A study lifecycle operation cannot be carried out."""


class StudyNotFoundError(StudyError, KeyError):
    """No study of that name exists in the storage."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class StudyExistsError(StudyError):
    """A study of that name already exists in the storage."""


class SpaceMismatchError(StudyError):
    """A study is run with a search space different from the one it was created with."""


class WorkloadError(AutotuneError, ValueError):
    """A workload name or factory is unknown or does not build a valid workload."""


class ModelFactoryError(WorkloadError):
    """A workload factory, or the ``ModelSpec`` it returned, is unusable: it raised, it
    returned another type or a model of another framework, its batches have the wrong
    batch dimension or the model rejects them, its loss is not a scalar. Raised in the
    worker; the trial is recorded failed (``failure_kind: model_error``), never retried."""

    failure_kind = "model_error"


class TrialError(AutotuneError):
    """A trial could not produce a measurement for a reason that is itself a result."""

    failure_kind = "error"


class UnsupportedConfigError(TrialError):
    """The sampled combination cannot run on this backend and device."""

    failure_kind = "unsupported"


class OutOfMemoryError(TrialError, MemoryError):
    """The device (or the trial's memory cap) ran out of memory."""

    failure_kind = "oom"


class NonFiniteLossError(TrialError):
    """Training produced a NaN or infinite loss."""

    failure_kind = "nan_loss"


class RecommendError(AutotuneError, ValueError):
    """``recommend`` cannot answer: an unknown metric, an unparsable condition, a study
    without a measured trial, or no trial that satisfies the constraints.

    When nothing satisfies the constraints, ``binding`` is the constraint that binds (as
    text, e.g. ``"latency_p95_ms <= 20"``) and ``nearest`` the closest trials as
    ``(trial number, value of the binding metric)`` pairs; both are empty otherwise.
    """

    def __init__(self, message: str, *, binding: str | None = None,
                 nearest: tuple[tuple[int, float | None], ...] = ()) -> None:
        super().__init__(message)
        self.binding = binding
        self.nearest = nearest


class GateError(AutotuneError, ValueError):
    """``gate`` cannot judge: the configuration file is invalid (unknown knob, bad value)
    or describes another workload or mode than the study's."""
