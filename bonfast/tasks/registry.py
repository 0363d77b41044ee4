"""Name -> task / verifier lookup, and user plug-ins by import path ("my_pkg.my_module:MyTask")."""
from __future__ import annotations

import importlib
import inspect

from .base import Task, build_from_object, check_task_object, load_object
from .verifiers import (
    BiasedVerifier,
    CallableVerifier,
    LogprobVerifier,
    MajorityVerifier,
    NoisyVerifier,
    OracleVerifier,
    Verifier,
)

__all__ = ["TASKS", "VERIFIERS", "get_task", "get_verifier"]

# name -> (module, class, fixed keyword arguments). Modules are imported on first use, so a missing optional
# package only matters for the task that needs it.
_TASKS = {
    "arithmetic": ("bonfast.tasks.arithmetic", "ArithmeticTask", {}),
    "gsm8k": ("bonfast.tasks.math", "GSM8KTask", {}),
    "math500": ("bonfast.tasks.math", "MathTask", {"subset": "math500"}),
    "math": ("bonfast.tasks.math", "MathTask", {"subset": "math"}),
    "svamp": ("bonfast.tasks.math", "WordProblemTask", {"subset": "svamp"}),
    "asdiv": ("bonfast.tasks.math", "WordProblemTask", {"subset": "asdiv"}),
    "mawps": ("bonfast.tasks.math", "WordProblemTask", {"subset": "mawps"}),
    "humaneval": ("bonfast.tasks.humaneval", "HumanEvalTask", {}),
}
_VERIFIERS = {
    "oracle": OracleVerifier,
    "noisy": NoisyVerifier,
    "majority": MajorityVerifier,
    "logprob": LogprobVerifier,
    "biased": BiasedVerifier,
    "callable": CallableVerifier,
}
TASKS = tuple(_TASKS)
VERIFIERS = tuple(_VERIFIERS)


def _is_import_path(name: str) -> bool:
    return ":" in name or "." in name


def get_task(name: str, **kwargs) -> Task:
    """The task called `name` (one of `TASKS`), or a user task at an import path.

    `"my_pkg.my_module:MyTask"` may name a Task subclass (instantiated with `**kwargs`), a factory function
    returning a task, or a task instance. A user task must provide `name`, `examples`, `prompt_ids`,
    `extract_answer`, `reward` and `rewards` (subclassing `bonfast.tasks.Task` provides the last three).

    Raises ValueError for an unknown name (listing the valid ones) or a malformed user task, and ImportError
    naming the `pip install` command when an optional package the task needs is missing.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"task must be a non-empty str, one of {list(TASKS)} or 'package.module:Name', "
                         f"got {name!r}")
    if name in _TASKS:
        module, cls, fixed = _TASKS[name]
        return getattr(importlib.import_module(module), cls)(**fixed, **kwargs)
    if not _is_import_path(name):
        raise ValueError(f"unknown task {name!r}; valid names are {list(TASKS)}, or an import path "
                         "'package.module:Name' of a bonfast.tasks.Task subclass")
    obj = load_object(name, "task")
    return check_task_object(build_from_object(obj, kwargs, "task", name), name)


def get_verifier(name, task: Task, **kwargs) -> Verifier:
    """The verifier called `name` (one of `VERIFIERS`) for `task`, or a user verifier.

    `name` may also be an import path "my_pkg.my_module:Name" (or directly an object): a Verifier subclass
    (instantiated as `Name(task, **kwargs)`), a function `fn(example, response) -> float` (wrapped in
    `CallableVerifier`, `batched=True` for `fn(example, responses) -> list[float]`), or an object with a
    `score` method. Unknown names raise one ValueError listing the valid ones.
    """
    if isinstance(name, str) and name in _VERIFIERS:
        return _VERIFIERS[name](task, **kwargs)
    if isinstance(name, str):
        if not _is_import_path(name):
            raise ValueError(f"unknown verifier {name!r}; valid names are {list(VERIFIERS)}, or an import "
                             "path 'package.module:Name' of a Verifier subclass or a scoring function")
        obj, origin = load_object(name, "verifier"), name
    else:
        obj, origin = name, repr(name)
    if inspect.isclass(obj):
        verifier = build_from_object(obj, kwargs, "verifier", origin, task)
    elif callable(obj) and not callable(getattr(obj, "score", None)):
        return CallableVerifier(task, fn=obj, **kwargs)
    else:
        verifier = build_from_object(obj, kwargs, "verifier", origin)
    if not callable(getattr(verifier, "score", None)):
        raise ValueError(f"verifier {origin} ({type(verifier).__name__}) has no method "
                         "score(example, responses, *, logprobs=None) -> list[float]")
    return verifier


def _learned(task: Task, **kwargs) -> Verifier:
    """The learned verifier (bonfast.tasks.learned), imported on first use: it needs the model and the trainer."""
    from .learned import LearnedVerifier
    return LearnedVerifier(task, **kwargs)


_VERIFIERS["learned"] = _learned
VERIFIERS = tuple(_VERIFIERS)
