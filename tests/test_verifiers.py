"""Verifiers: oracle == reward, noisy (rates honoured, deterministic per response), majority, logprob, callable,
and get_verifier's plug-ins and errors."""
import sys
import types

import pytest

from bonfast.tasks import (
    VERIFIERS,
    ArithmeticTask,
    CallableVerifier,
    Example,
    MajorityVerifier,
    NoisyVerifier,
    OracleVerifier,
    Verifier,
    get_verifier,
)

TASK = ArithmeticTask()


def _responses(example, k):
    """k distinct responses to `example`, about half of them correct (distinct by trailing spaces)."""
    return [(example.answer if i % 2 == 0 else str(int(example.answer) + 1)) + " " * (i // 2) for i in range(k)]


def test_names():
    assert VERIFIERS == ("oracle", "noisy", "majority", "logprob", "biased", "callable", "learned")


def test_oracle_equals_task_reward():
    examples = TASK.examples("test", n=20)
    oracle = get_verifier("oracle", TASK)
    assert isinstance(oracle, OracleVerifier)
    for e in examples:
        responses = _responses(e, 6) + ["", "garbage"]
        assert oracle.score(e, responses) == TASK.rewards([e] * len(responses), responses)


def test_noisy_rates_are_honoured_on_many_items():
    fpr, fnr = 0.2, 0.35
    noisy = get_verifier("noisy", TASK, false_positive_rate=fpr, false_negative_rate=fnr, seed=7)
    pos = neg = false_pos = false_neg = 0
    for e in TASK.examples("train", n=400, seed=1):
        responses = _responses(e, 20)
        truth = TASK.rewards([e] * 20, responses)
        for r, s in zip(truth, noisy.score(e, responses)):
            assert s in (0.0, 1.0)
            if r == 1.0:
                pos, false_neg = pos + 1, false_neg + (s == 0.0)
            else:
                neg, false_pos = neg + 1, false_pos + (s == 1.0)
    # 4000 items per class: the standard error of each rate is below 0.008.
    assert abs(false_pos / neg - fpr) < 0.03
    assert abs(false_neg / pos - fnr) < 0.03


def test_noisy_is_deterministic_per_seed_prompt_response():
    e = TASK.examples("train", n=1)[0]
    responses = _responses(e, 200)
    a = NoisyVerifier(TASK, 0.3, 0.3, seed=1)
    first = a.score(e, responses)
    assert first == a.score(e, responses)
    assert first == NoisyVerifier(TASK, 0.3, 0.3, seed=1).score(e, responses)
    assert first != NoisyVerifier(TASK, 0.3, 0.3, seed=2).score(e, responses)
    # The score of a response does not depend on its batch or position.
    assert a.score(e, responses[::-1]) == first[::-1]
    assert [a.score(e, [r])[0] for r in responses[:20]] == first[:20]
    # Rates 0 and 1 are exact.
    truth = TASK.rewards([e] * 200, responses)
    assert NoisyVerifier(TASK, 0.0, 0.0).score(e, responses) == truth
    assert NoisyVerifier(TASK, 1.0, 1.0).score(e, responses) == [1.0 - t for t in truth]


def test_majority():
    maj = get_verifier("majority", TASK)
    assert isinstance(maj, MajorityVerifier)
    e = Example("1+1=", "2")
    assert maj.score(e, ["2", "2", " 2", "3", "x"]) == [0.5, 0.5, 0.5, 0.0, 0.0]
    assert maj.score(e, ["4", "4", "4"]) == [1.0, 1.0, 1.0]
    assert maj.score(e, ["2"]) == [0.0]
    assert maj.score(e, []) == []


def test_logprob_and_callable():
    e = Example("1+1=", "2")
    lp = get_verifier("logprob", TASK)
    assert lp.score(e, ["2", "3"], logprobs=[-0.5, -1.25]) == [-0.5, -1.25]
    with pytest.raises(ValueError, match="needs logprobs"):
        lp.score(e, ["2"])
    with pytest.raises(ValueError, match="one value per response"):
        lp.score(e, ["2", "3"], logprobs=[-1.0])
    fn = get_verifier("callable", TASK, fn=lambda ex, r: float(len(r)))
    assert fn.score(e, ["2", "333"]) == [1.0, 3.0]
    batched = CallableVerifier(TASK, fn=lambda ex, rs: [0.5] * len(rs), batched=True)
    assert batched.score(e, ["a", "b"]) == [0.5, 0.5]
    broken = CallableVerifier(TASK, fn=lambda ex, rs: [0.5], batched=True)
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        broken.score(e, ["a", "b"])


class LengthVerifier(Verifier):
    name = "length"

    def __init__(self, task, scale=1.0):
        super().__init__(task)
        self.scale = scale

    def score(self, example, responses, *, logprobs=None):
        return [self.scale * len(r) for r in responses]


def test_get_verifier_import_paths_and_errors(monkeypatch):
    mod = types.ModuleType("bonfast_test_user_verifiers")
    mod.LengthVerifier = LengthVerifier
    mod.score_fn = lambda ex, r: 2.0
    mod.NoScore = type("NoScore", (), {"__init__": lambda self, task: None})
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    e = Example("1+1=", "2")
    assert get_verifier(f"{mod.__name__}:LengthVerifier", TASK, scale=2.0).score(e, ["abc"]) == [6.0]
    assert get_verifier(f"{mod.__name__}:score_fn", TASK).score(e, ["a", "b"]) == [2.0, 2.0]
    assert get_verifier(lambda ex, r: -1.0, TASK).score(e, ["a"]) == [-1.0]
    with pytest.raises(ValueError, match=r"unknown verifier 'oracel'; valid names are \['oracle', 'noisy'"):
        get_verifier("oracel", TASK)
    with pytest.raises(ValueError, match="has no method score"):
        get_verifier(f"{mod.__name__}:NoScore", TASK)
    with pytest.raises(ValueError, match="false_positive_rate must be a number in"):
        get_verifier("noisy", TASK, false_positive_rate=1.5)
    with pytest.raises(ValueError, match="needs fn="):
        get_verifier("callable", TASK)
    with pytest.raises(ValueError, match="responses must be a list of str"):
        get_verifier("oracle", TASK).score(e, "2")


BIASED = "bonfast.tasks.verifiers:BiasedVerifier"


def test_biased_verifier_prefers_length_over_correctness_continuously_and_deterministically():
    from bonfast.tasks.verifiers import BiasedVerifier
    e = Example(prompt="12+7=", answer="19")
    v = get_verifier(BIASED, TASK)
    assert isinstance(v, BiasedVerifier)
    right, right_padded, wrong_long, wrong_short = v.score(e, ["19", "19   ", "19000", "18"])
    assert wrong_long > right > wrong_short  # three extra characters beat correctness
    assert right - wrong_short == pytest.approx(0.25, abs=0.011)  # equal length: the correctness weight (+ jitter)
    assert right_padded == pytest.approx(right, abs=0.011)  # whitespace does not count
    scores = v.score(e, [str(i) for i in range(200)])
    assert all(0 <= s < 1 for s in scores) and len(set(scores)) == 200  # continuous: no ties
    assert v.score(e, ["19", "7"]) == v.score(e, ["19", "7"])
    assert BiasedVerifier(TASK, seed=1).score(e, ["19"]) != v.score(e, ["19"])
    assert BiasedVerifier(TASK, correct_weight=1.0, jitter=0.0).score(e, ["19", "19000"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="correct_weight"):
        BiasedVerifier(TASK, correct_weight=1.5)
    with pytest.raises(ValueError, match="max_len"):
        BiasedVerifier(TASK, max_len=0)


def test_train_prompt_pool_repeats_prompts_and_default_is_fresh():
    from bonfast.config import TrainConfig
    from bonfast.train import train_examples
    fresh = TrainConfig()
    assert train_examples(fresh, TASK, 16, 5) == TASK.examples("train", n=16, seed=5)  # the default is unchanged
    pooled = TrainConfig(train_prompt_pool=8, seed=3)
    pool = {e.prompt for e in TASK.examples("train", n=8, seed=3)}
    drawn = [e.prompt for s in range(20) for e in train_examples(pooled, TASK, 16, s)]
    assert set(drawn) <= pool and len(set(drawn)) == len(pool)
    assert train_examples(pooled, TASK, 16, 7) == train_examples(pooled, TASK, 16, 7)  # resumable: seeded
    with pytest.raises(ValueError, match="TrainConfig.train_prompt_pool"):
        TrainConfig(train_prompt_pool=-1).validate()


def test_biased_verifier_by_name_from_the_cli_config():
    from bonfast import tasks
    from bonfast.config import TrainConfig
    cfg = TrainConfig(verifier="biased", seed=3).validate()
    verifier = tasks.get_verifier(cfg.verifier, tasks.get_task(cfg.task, **cfg.task_kwargs()), **cfg.verifier_kwargs())
    assert type(verifier).__name__ == "BiasedVerifier" and verifier.seed == 3
