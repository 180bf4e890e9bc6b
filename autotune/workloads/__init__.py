"""Workloads: the model-factory contract, factory loading and the built-in models.

A workload is a factory ``build(framework, **kwargs) -> ModelSpec`` (:mod:`._spec`),
named in a space file by a built-in name (``mlp``, ``digits_mlp``, ``cnn``), a file path
(``models/my_cnn.py:build``) or a module (``my_package.models:build``), with ``kwargs``.
The study driver checks the name without importing it (:func:`parse_workload`); the worker
imports and calls it (:func:`load_model_spec`).
"""

from __future__ import annotations

from autotune.workloads._base import Dataset
from autotune.workloads._corpus import Corpus, stdlib_corpus
from autotune.workloads._factory import (
    BUILTIN,
    BUILTIN_DESCRIPTIONS,
    WorkloadRef,
    check_factory,
    factory_hash,
    load_model_spec,
    parse_workload,
)
from autotune.workloads._spec import DEFAULT_EPOCH_SAMPLES, LOSSES, ModelSpec

__all__ = ["BUILTIN", "BUILTIN_DESCRIPTIONS", "DEFAULT_EPOCH_SAMPLES", "LOSSES", "Corpus",
           "Dataset", "ModelSpec", "WorkloadRef", "check_factory", "factory_hash",
           "load_model_spec", "parse_workload", "stdlib_corpus"]
