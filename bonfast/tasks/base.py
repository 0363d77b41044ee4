"""The task interface every bonfast task implements, and the example record it hands out.

A task is a prompt distribution `x ~ P` with an environment reward `R(x, y)` (docs/method.md §2). The trainer uses
exactly this surface:

    task.examples(split, n, seed)        -> list[Example]             prompts with their gold answers
    task.prompt_ids(example, tokenizer)  -> list[int]                 what the engine prefills
    task.rewards(examples, responses)    -> list[float]               R for a batch (parallel where it helps)

and, for supervised warm starts, `task.reference_response(example)`.
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Example", "Task", "SPLITS", "check_split_n", "load_object", "check_task_object"]

SPLITS = ("train", "test")

# The methods and attributes the trainer calls on a task; a user task must provide all of them.
TASK_METHODS = ("examples", "prompt_ids", "extract_answer", "reward", "rewards")


@dataclass
class Example:
    """One prompt with its gold final answer.

    prompt: the raw problem text (no chat template, no format instruction; `Task.prompt_ids` adds those).
    answer: the gold final answer, normalised by the task (for `arithmetic` the integer as text, for math the
            LaTeX answer, for `humaneval` the entry-point name).
    meta:   task-specific extras, e.g. {"level": 2}, {"task_id": ..., "tests": ...}, {"solution": ...}.
    """

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def check_split_n(split: str, n: int | None, seed: int) -> None:
    """Validate the common arguments of `Task.examples` (one ValueError naming the argument)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None (all examples), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


class Task:
    """Base class of bonfast tasks. Subclasses set `name` and implement `examples` and `extract_answer`;
    they usually override `is_correct` (or `reward`), and may override `rewards` to batch or parallelise.

    The reward is the environment reward R(x, y) in [0, 1]; for binary tasks `reward = 1.0` iff the answer
    extracted from the response is correct, so Best-of-N under the oracle verifier is pass@N.
    """

    name: str = "task"
    # Appended to the problem text in `prompt_ids` (chat and plain formats). Empty: the prompt stands alone.
    instruction: str = ""

    # ---- data -----------------------------------------------------------------------------------------------
    def examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """The first `n` examples of `split` ("train" | "test") in the order fixed by `seed` (all if n is None)."""
        raise NotImplementedError(f"{type(self).__name__} must implement examples(split, n, seed)")

    def reference_response(self, example: Example) -> str | None:
        """A correct response for supervised warm starts (`example.meta["solution"]`), or None if unknown."""
        return example.meta.get("solution")

    # ---- prompts --------------------------------------------------------------------------------------------
    def format_prompt(self, example: Example) -> str:
        """Problem text plus the format instruction, the user turn of the chat template."""
        return f"{example.prompt}\n\n{self.instruction}" if self.instruction else example.prompt

    def format_plain(self, example: Example) -> str:
        """Plain-text prompt for tokenizers without a chat template (base models)."""
        return f"Question: {self.format_prompt(example)}\nAnswer:"

    def prompt_ids(self, example: Example, tokenizer) -> list[int]:
        """Token ids the engine prefills for `example`.

        With a chat template (`tokenizer.chat_template` set): one user turn holding `format_prompt(example)`,
        followed by the assistant generation prompt. Otherwise `format_plain(example)`, encoded, with
        `tokenizer.bos_token_id` prepended when the tokenizer has one and did not add it itself.
        """
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": self.format_prompt(example)}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # The template already writes the special tokens it wants (bos, role markers).
            return list(tokenizer.encode(text, add_special_tokens=False))
        ids = list(tokenizer.encode(self.format_plain(example)))
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    # ---- reward ---------------------------------------------------------------------------------------------
    def extract_answer(self, response: str) -> str | None:
        """The final answer written in `response`, or None when there is none (see each task's docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement extract_answer(response)")

    def is_correct(self, gold: str, pred: str) -> bool:
        """Whether an extracted answer `pred` equals the gold answer. Default: exact string match."""
        return pred == gold

    def reward(self, example: Example, response: str) -> float:
        """R(x, y): 1.0 iff an answer can be extracted from `response` and it is correct, else 0.0."""
        pred = self.extract_answer(response)
        return float(pred is not None and self.is_correct(example.answer, pred))

    def rewards(self, examples: list[Example], responses: list[str]) -> list[float]:
        """`reward` of each (example, response) pair; lengths must match."""
        check_pairs(examples, responses)
        return [self.reward(e, r) for e, r in zip(examples, responses)]

    def answer_key(self, answer: str) -> str:
        """Canonical string of an extracted answer, used to group equal answers (majority voting)."""
        return re.sub(r"\s+", "", answer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_pairs(examples, responses) -> None:
    """One ValueError when `examples` and `responses` are not equal-length sequences."""
    if not isinstance(responses, (list, tuple)) or not all(isinstance(r, str) for r in responses):
        raise ValueError("responses must be a list of str")
    if len(examples) != len(responses):
        raise ValueError(f"examples and responses must have the same length, got {len(examples)} and "
                         f"{len(responses)}")


# ---- user plug-ins ----------------------------------------------------------------------------------------
def load_object(path: str, what: str) -> Any:
    """Import `"package.module:attr"` (or `"package.module.attr"`) and return `attr`.

    Raises ValueError naming `path` when the module or attribute does not exist.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{what} import path must look like 'package.module:Name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({err})") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def check_task_object(task: Any, origin: str) -> Any:
    """Return `task` if it has every method the trainer calls, else one ValueError listing the missing ones."""
    missing = [m for m in TASK_METHODS if not callable(getattr(task, m, None))]
    if missing:
        raise ValueError(
            f"task {origin!r} ({type(task).__name__}) is missing method(s) {missing}; a task needs "
            f"{list(TASK_METHODS)} and a `name` (subclass bonfast.tasks.Task to inherit prompt_ids, reward "
            "and rewards)")
    if not isinstance(getattr(task, "name", None), str):
        raise ValueError(f"task {origin!r} ({type(task).__name__}) needs a str attribute `name`")
    return task


def build_from_object(obj: Any, kwargs: dict, what: str, path: str, *args) -> Any:
    """Instantiate a class or call a factory found at an import path; an instance is returned as is."""
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
        try:
            return obj(*args, **kwargs)
        except TypeError as err:
            raise ValueError(f"{what} {path!r}: calling {getattr(obj, '__name__', obj)} with "
                             f"arguments {sorted(kwargs)} failed: {err}") from err
    if kwargs:
        raise ValueError(f"{what} {path!r} is an instance, it takes no keyword arguments; got {sorted(kwargs)}")
    return obj
