"""Naming, checking and loading workload factories.

A workload is written in a space file as a built-in name (``mlp``), a factory string
(``models/my_cnn.py:build``, relative to the space file, or ``my_package.models:build``), or
a mapping ``{factory: ..., kwargs: {...}}``. The study driver checks all of it *without
importing the factory* (it may import its framework at top level); the worker imports and
calls it (:func:`load_model_spec`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.exceptions import ModelFactoryError, WorkloadError
from autotune.workloads._spec import ModelSpec

#: Built-in workloads: name -> ``module:function`` of their factory (same contract).
BUILTIN: Mapping[str, str] = {
    "mlp": "autotune.workloads._builtin:mlp",
    "digits_mlp": "autotune.workloads._builtin:digits_mlp",
    "cnn": "autotune.workloads._builtin:cnn",
    "gpt": "autotune.workloads._gpt:gpt",
    "simulated": "autotune.simulation:simulated_workload",
}
#: What each built-in is, for ``--help`` and errors.
BUILTIN_DESCRIPTIONS: Mapping[str, str] = {
    "mlp": "3x1000 ReLU MLP on 8192 generated samples labelled by a teacher network",
    "digits_mlp": "3x1000 ReLU MLP on scikit-learn's 8x8 digits, 25 % held out",
    "cnn": "small ResNet-style CNN (conv + batch norm + residual blocks) on the 8x8 digits",
    "gpt": "byte-level GPT-style decoder (pre-norm blocks, causal attention, tied embeddings, "
           "KV cache) on the Python standard library's sources; quality: perplexity",
    "simulated": "a model and devices declared in the space file, run by the 'sim' backend "
                 "in simulated time (planning and search experiments; not measurements)",
}


@dataclass(frozen=True)
class WorkloadRef:
    """Which factory builds the model, with its keyword arguments (JSON-able).

    ``factory`` is a built-in name, ``module:function``, or ``/abs/path/file.py:function``
    (a relative path in a space file is resolved against the file's folder at parse time).
    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_builtin(self) -> bool:
        """Whether this is one of :data:`BUILTIN`."""
        return self.factory in BUILTIN

    @property
    def target(self) -> str:
        """``module:function`` or ``path.py:function`` of the factory."""
        return BUILTIN.get(self.factory, self.factory)

    @property
    def is_file(self) -> bool:
        """Whether the factory lives in a file named by path."""
        return self.target.partition(":")[0].endswith(".py")

    def label(self) -> str:
        """How the workload is shown: the factory and its kwargs."""
        if not self.kwargs:
            return self.factory
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{self.factory}({args})"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what a stored space and a trial config hold)."""
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}


def parse_workload(value: Any, base_dir: Path | None = None, *,
                   check: bool = True) -> WorkloadRef:
    """A space file's ``workload`` value as a checked :class:`WorkloadRef`.

    Raises ``WorkloadError`` naming what is wrong and what is allowed. ``check=False``
    checks the form only, not that the file or module exists (a stored study).
    """
    kwargs: Any = {}
    if isinstance(value, Mapping):
        unknown = set(value) - {"factory", "kwargs", "name"}
        if unknown:
            raise WorkloadError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                                "allowed: factory, kwargs")
        factory = value.get("factory", value.get("name"))
        kwargs = value.get("kwargs") or {}
    else:
        factory = value
    if not isinstance(factory, str) or not factory:
        raise WorkloadError(f"must be a built-in name ({', '.join(BUILTIN)}), a factory "
                            f"'file.py:function' or 'package.module:function', got {factory!r}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) and k.isidentifier()
                                                  for k in kwargs):
        raise WorkloadError(f"kwargs must be a mapping of identifiers to values, got {kwargs!r}")
    try:
        kwargs = json.loads(json.dumps(dict(kwargs), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise WorkloadError(f"kwargs must be JSON-able (numbers, strings, lists, "
                            f"mappings): {e}") from None
    path, sep, attr = factory.partition(":")
    if sep and path.endswith(".py") and base_dir is not None and not Path(path).is_absolute():
        factory = f"{(base_dir / path).resolve()}:{attr}"
    ref = WorkloadRef(factory, kwargs)
    if check:
        check_factory(ref)
    else:
        _check_form(ref)
    return ref


def _check_form(ref: WorkloadRef) -> None:
    if ref.is_builtin:
        return
    module, sep, attr = ref.factory.partition(":")
    if not sep or not module or not attr.isidentifier():
        raise WorkloadError(f"unknown workload {ref.factory!r}")


def check_factory(ref: WorkloadRef) -> None:
    """Check ``ref`` without importing it: the file or module exists and the function name
    is an identifier (the worker checks the rest)."""
    if ref.is_builtin:
        return
    module, sep, attr = ref.factory.partition(":")
    if not sep or not module or not attr.isidentifier():
        raise WorkloadError(
            f"unknown workload {ref.factory!r}; built-in: {', '.join(BUILTIN)}, or a factory "
            "as 'file.py:function' (relative to the space file) or 'package.module:function'")
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise WorkloadError(f"factory file {module} does not exist")
    else:
        if not all(part.isidentifier() for part in module.split(".")):
            raise WorkloadError(f"{module!r} is not a module name (write "
                                "'package.module:function' or 'file.py:function')")
        found = module_file(module)
        if found is None:
            raise WorkloadError(f"workload {ref.factory!r}: no module named {module!r} on "
                                "the Python path")
        path = found
    _check_defines(path, attr, ref.factory)


def _check_defines(path: Path, name: str, factory: str) -> None:
    """Check, by parsing the file (never running it), that it binds ``name`` at top level
    (a ``def``, an assignment or an import)."""
    try:
        source = path.read_bytes()
    except OSError as e:
        raise WorkloadError(f"factory file {path} cannot be read: {e.strerror}") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise WorkloadError(f"factory file {path}: syntax error at line {e.lineno}: "
                            f"{e.msg}") from None
    bound: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.extend(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.extend((a.asname or a.name).split(".")[0] for a in node.names)
    if name in bound or "*" in bound:
        return
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    raise WorkloadError(
        f"factory {factory}: {path} has no top-level function {name!r} (functions there: "
        f"{', '.join(functions) or 'none'})")


def module_file(module: str) -> Path | None:
    """The source file of ``module`` found on ``sys.path``, without importing anything
    (``importlib.util.find_spec`` would import the parent packages)."""
    parts = module.split(".")
    for entry in sys.path:
        root = Path(entry or ".")
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    # Not a plain folder on sys.path: an editable install's meta-path finder (pip install
    # -e) knows where the top-level package is; finding a top-level spec imports nothing.
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or ():
        base = Path(location).joinpath(*parts[1:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def factory_hash(ref: WorkloadRef) -> str | None:
    """SHA-256 (16 hex digits) of the file that defines the factory; ``None`` for built-ins
    (they are versioned with autotune) and when the file cannot be found."""
    if ref.is_builtin:
        return None
    module = ref.factory.partition(":")[0]
    path = Path(module) if module.endswith(".py") else module_file(module)
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _import_factory(ref: WorkloadRef) -> Callable[..., Any]:
    target = ref.target
    module_name, _, attr = target.partition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        # The file's folder is importable, as when Python runs a script, so the factory
        # can import its sibling modules.
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        name = f"autotune_factory_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelFactoryError(f"factory {ref.factory}: {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        function: Callable[..., Any] = getattr(module, attr)
    except AttributeError:
        raise ModelFactoryError(
            f"factory {ref.factory}: {module_name} has no function {attr!r}") from None
    if not callable(function):
        raise ModelFactoryError(f"factory {ref.factory}: {attr!r} is not callable")
    return function


def load_model_spec(ref: WorkloadRef, framework: str) -> ModelSpec:
    """Import the factory and call ``build(framework, **kwargs)`` (in the worker only).

    Every failure is a :class:`ModelFactoryError` whose message is one line naming the
    factory: it raised, it does not exist, or it returned something else than a
    ``ModelSpec``.
    """
    try:
        build = _import_factory(ref)
        spec = build(framework, **dict(ref.kwargs))
    except ModelFactoryError:
        raise
    except Exception as e:
        where = _user_frame(e)
        raise ModelFactoryError(
            f"factory {ref.label()} raised {type(e).__name__}: {_one_line(e)}{where}") from e
    if not isinstance(spec, ModelSpec):
        raise ModelFactoryError(
            f"factory {ref.label()} returned {type(spec).__name__}, not an autotune.ModelSpec")
    return spec


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else "(no message)"


def _user_frame(error: BaseException) -> str:
    """`` (at file:line)`` of the innermost frame of the user's code, for the error line."""
    tb = error.__traceback__
    last = ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "/autotune/" not in filename and "importlib" not in filename:
            last = f" (at {filename}:{tb.tb_lineno})"
        tb = tb.tb_next
    return last
