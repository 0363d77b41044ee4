"""`arithmetic`: the embedded default task. Integer expressions generated from a seed, exact reward.

Prompt `"12+7="`, response `"19"` followed by `<eos>`; reward 1.0 iff the response is exactly one integer
(optional sign, surrounding spaces allowed) equal to the value of the expression. Nothing is stored or
downloaded: examples are generated on the fly.

Difficulty levels (operands drawn uniformly from the ranges shown; `-` results may be negative):

    level 1   a+b                         a, b in [0, 9]
    level 2   a+b | a-b                   a, b in [10, 99]
    level 3   a*b | a+b-c | a-b+c         a in [10, 99], b in [2, 9] for a*b; a, b, c in [10, 99] otherwise
    level 4   a*b                         a, b in [10, 99]
    level 5   (a+b)*c | (a-b)*c | a*b-c   a, b in [10, 99], c in [2, 9] inside the products, c in [10, 99] after

Measured solve rates (2026-11-26, `python experiments/arithmetic_levels.py`): the embedded default model
(`bonfast train`: D = 128, 4 layers, 200 supervised warm-start steps on levels 1-3, seed 0), sampled at
T = 1, 200 test prompts per level, n = 16, 95% bootstrap intervals:

    level 1   pass@1 45.2% [42.5, 47.8]   pass@16 97.0% [94.5, 99.0]     solved often
    level 2   pass@1  2.3% [ 1.8,  2.8]   pass@16 30.5% [24.5, 37.0]     solved sometimes
    level 3   pass@1  0.8% [ 0.5,  1.0]   pass@16 11.5% [ 7.5, 16.0]     solved rarely
    level 4   pass@1  0.0%                pass@16  0.0%                  never
    level 5   pass@1  0.0%                pass@16  0.0%                  never (a harder probe)

So on the default mix (levels 1-3) pass@1 is low and pass@k grows steeply with k: BoN-aware training sees
prompts that are solved often, sometimes and never.

Determinism and the split: `examples(split, n, seed)` draws problems from `random.Random` seeded by
`(split, seed)`, so equal arguments give equal lists and `examples(n=10)` is a prefix of `examples(n=20)`.
Every problem text belongs to exactly one split, by a hash of the text (`test` iff
`blake2b(prompt) mod 10 == 0`, about 10% of each level's problem space), so train and test are disjoint by
construction for every seed. Problems may repeat within a list (level 1 has only 100 distinct problems).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

from .base import Example, Task, check_split_n

__all__ = ["ArithmeticTask", "LEVELS", "DEFAULT_LEVELS", "split_of"]

LEVELS = {
    1: "a+b with a, b in [0, 9]",
    2: "a+b or a-b with a, b in [10, 99]",
    3: "a*b with a in [10, 99], b in [2, 9]; or a+b-c / a-b+c with a, b, c in [10, 99]",
    4: "a*b with a, b in [10, 99]",
    5: "(a+b)*c or (a-b)*c with c in [2, 9], or a*b-c with c in [10, 99]; a, b in [10, 99]",
}
DEFAULT_LEVELS = (1, 2, 3, 4)
# Examples returned by `examples(split, n=None)`: the generator is endless, so "all" means this many.
DEFAULT_SIZES = {"train": 10_000, "test": 1_000}
TEST_BUCKETS = 10  # 1 bucket in 10 of the problem space goes to the test split

_ANSWER = re.compile(r"\s*(-?\d+)\s*")
MAX_DIGITS = 1000  # longer integers are no answer (the longest gold answer has 4 digits)


def split_of(prompt: str) -> str:
    """"test" iff blake2b(prompt) mod 10 == 0, else "train" (stable across runs and Python versions)."""
    h = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "little")
    return "test" if h % TEST_BUCKETS == 0 else "train"


def _draw(level: int, rng: random.Random) -> tuple[str, int]:
    """One problem of `level`: (prompt text without "=", value)."""
    two = lambda: rng.randint(10, 99)  # noqa: E731
    one = lambda: rng.randint(2, 9)  # noqa: E731
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"{a}+{b}", a + b
    if level == 2:
        a, b = two(), two()
        return (f"{a}+{b}", a + b) if rng.random() < 0.5 else (f"{a}-{b}", a - b)
    if level == 3:
        kind = rng.randrange(3)
        if kind == 0:
            a, b = two(), one()
            return f"{a}*{b}", a * b
        a, b, c = two(), two(), two()
        return (f"{a}+{b}-{c}", a + b - c) if kind == 1 else (f"{a}-{b}+{c}", a - b + c)
    if level == 4:
        a, b = two(), two()
        return f"{a}*{b}", a * b
    kind = rng.randrange(3)
    a, b = two(), two()
    if kind == 0:
        c = one()
        return f"({a}+{b})*{c}", (a + b) * c
    if kind == 1:
        c = one()
        return f"({a}-{b})*{c}", (a - b) * c
    c = two()
    return f"{a}*{b}-{c}", a * b - c


def check_levels(levels) -> tuple[int, ...]:
    """Validate a non-empty sequence of known levels (one ValueError naming `levels`)."""
    if (not isinstance(levels, Sequence) or isinstance(levels, str) or not levels
            or any(lv not in LEVELS or isinstance(lv, bool) for lv in levels)):
        raise ValueError(f"levels must be a non-empty sequence drawn from {tuple(LEVELS)}, got {levels!r}")
    return tuple(levels)


class ArithmeticTask(Task):
    """Integer arithmetic at difficulty `levels` (see the module docstring), exact reward.

    Pair it with `bonfast.tasks.ArithmeticTokenizer` (no chat template): `prompt_ids` is `[<bos>] + "12+7="`.
    With a chat tokenizer the prompt becomes a user turn with the instruction "Answer with the number only."
    """

    name = "arithmetic"
    instruction = "Answer with the number only."

    def __init__(self, levels: Sequence[int] = DEFAULT_LEVELS):
        self.levels = check_levels(levels)

    def examples(self, split: str = "train", n: int | None = None, seed: int = 0,
                 levels: Sequence[int] | None = None) -> list[Example]:
        """`n` problems of `split` (default 10,000 train / 1,000 test), each level drawn uniformly from
        `levels` (default: the task's levels). Deterministic in (split, seed, levels)."""
        check_split_n(split, n, seed)
        levels = self.levels if levels is None else check_levels(levels)
        n = DEFAULT_SIZES[split] if n is None else n
        rng = random.Random(f"bonfast/arithmetic/{split}/{seed}")
        out = []
        while len(out) < n:
            level = levels[rng.randrange(len(levels))]
            expr, value = _draw(level, rng)
            prompt = f"{expr}="
            if split_of(prompt) != split:
                continue
            answer = str(value)
            out.append(Example(prompt=prompt, answer=answer, meta={"level": level, "solution": answer}))
        return out

    def format_plain(self, example: Example) -> str:
        """The bare expression, e.g. "12+7=": the character model needs no wrapper."""
        return example.prompt

    def extract_answer(self, response: str) -> str | None:
        """The integer in `response` if the response is exactly one integer (optional leading "-", spaces
        around it allowed), in canonical form (no leading zeros, "-0" -> "0"); else None.

        Strict on purpose: "19+0" or "19 20" are not answers, so the reward cannot be gamed by listing numbers.
        An integer of more than MAX_DIGITS digits (leading zeros aside) is no answer either: no gold answer is
        that long, and it is never converted (Python refuses int() past 4300 digits).
        """
        m = _ANSWER.fullmatch(response)
        if m is None:
            return None
        sign, digits = ("-" if m.group(1).startswith("-") else ""), m.group(1).lstrip("-").lstrip("0") or "0"
        if len(digits) > MAX_DIGITS:
            return None
        return str(int(sign + digits))
