"""Verifiers: the scorer r(x, y) that Best-of-N selection uses (docs/method.md §2), next to the task reward R(x, y).

    oracle     r = R                                         (BoN under it = pass@N for binary rewards)
    noisy      r = R with errors at given false-positive / false-negative rates, deterministic per
               (seed, prompt, response): a consistent imperfect verifier, to study reward hacking
    biased     r = c R + (1 - c - j) min(L, L_max) / L_max + j u   a continuous verifier biased towards length L:
               a learnable surface feature it prefers over correctness (reward hacking can show)
    majority   r_i = #{j != i : a_j == a_i} / (n - 1)        a_i = the answer extracted from response i
    logprob    r_i = mean token log-prob of response i       (passed in by the caller)
    callable   r_i = fn(example, response_i)                 a user function

Every verifier maps one prompt and its n responses to n floats:
`verifier.score(example, responses, *, logprobs=None) -> list[float]`.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable

from .base import Example, Task

__all__ = ["Verifier", "OracleVerifier", "NoisyVerifier", "BiasedVerifier", "MajorityVerifier", "LogprobVerifier",
           "CallableVerifier", "unit_hash"]


def _check_responses(responses) -> None:
    if not isinstance(responses, (list, tuple)) or not all(isinstance(r, str) for r in responses):
        raise ValueError("responses must be a list of str (the n responses to one prompt)")


def unit_hash(*parts: object) -> float:
    """A deterministic uniform number in [0, 1) from `parts` (blake2b; stable across runs and processes)."""
    data = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") / 2.0**64


class Verifier:
    """Scores the n responses to one prompt. Subclasses implement `score`."""

    name = "verifier"

    def __init__(self, task: Task):
        self.task = task

    def score(self, example: Example, responses: list[str], *,
              logprobs: list[float] | None = None) -> list[float]:
        """r(x, y_i) for every response y_i to `example` (higher is better)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(example, responses)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={getattr(self.task, 'name', self.task)!r})"


class OracleVerifier(Verifier):
    """r = R: the task reward itself. Best-of-N under the oracle with a binary reward is pass@N."""

    name = "oracle"

    def score(self, example, responses, *, logprobs=None):
        _check_responses(responses)
        return [float(x) for x in self.task.rewards([example] * len(responses), list(responses))]


class NoisyVerifier(Verifier):
    """The task reward seen through a verifier with known error rates, deterministic per response.

    Let R be the task reward and positive = (R >= threshold). With u = unit_hash(seed, prompt, response),

        r = 0.0 if positive and u < false_negative_rate       (a correct response rejected)
        r = 1.0 if not positive and u < false_positive_rate   (a wrong response accepted)
        r = 1.0 if positive else 0.0                          otherwise

    The same response to the same prompt always gets the same score (a consistent, exploitable verifier,
    not fresh noise per call), and the error rates hold on average over distinct responses.
    """

    name = "noisy"

    def __init__(self, task: Task, false_positive_rate: float = 0.1, false_negative_rate: float = 0.1,
                 seed: int = 0, threshold: float = 1.0):
        super().__init__(task)
        for arg, v in (("false_positive_rate", false_positive_rate),
                       ("false_negative_rate", false_negative_rate)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{arg} must be a number in [0, 1], got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.false_positive_rate = float(false_positive_rate)
        self.false_negative_rate = float(false_negative_rate)
        self.seed = seed
        self.threshold = float(threshold)

    def score(self, example, responses, *, logprobs=None):
        _check_responses(responses)
        rewards = self.task.rewards([example] * len(responses), list(responses))
        out = []
        for resp, reward in zip(responses, rewards):
            u = unit_hash(self.seed, example.prompt, resp)
            if reward >= self.threshold:
                out.append(0.0 if u < self.false_negative_rate else 1.0)
            else:
                out.append(1.0 if u < self.false_positive_rate else 0.0)
        return out


class BiasedVerifier(Verifier):
    """A continuous verifier with a systematic, learnable bias: it prefers long responses over correct ones.

    With R the task reward, L the number of non-whitespace characters of the response and
    u = unit_hash(seed, prompt, response) in [0, 1),

        r = correct_weight R + (1 − correct_weight − jitter) min(L, max_len) / max_len + jitter u      in [0, 1).

    Each extra character is worth (1 − correct_weight − jitter) / max_len; with the defaults (0.25, 8, 0.01) that is
    0.0925, so a wrong response three characters longer than a correct one scores higher. The bias is a property of
    the response text, the same on every prompt, so a policy trained on r can learn it (write longer answers) and
    lose true reward while r rises: the reward-hacking case that a verifier with independent per-response errors
    (``NoisyVerifier``) cannot produce. The jitter makes scores continuous (ties have probability ~0), so BoK keeps
    changing with k instead of saturating as with a binary verifier. Deterministic per (seed, prompt, response).
    Whitespace does not count towards L, so padding a correct answer with spaces does not game it.
    """

    name = "biased"

    def __init__(self, task: Task, correct_weight: float = 0.25, max_len: int = 8, jitter: float = 0.01,
                 seed: int = 0):
        super().__init__(task)
        for arg, v in (("correct_weight", correct_weight), ("jitter", jitter)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{arg} must be a number in [0, 1], got {v!r}")
        if correct_weight + jitter > 1.0:
            raise ValueError(f"correct_weight + jitter must be <= 1, got {correct_weight} + {jitter}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.correct_weight, self.jitter, self.max_len, self.seed = float(correct_weight), float(jitter), max_len, seed

    def score(self, example, responses, *, logprobs=None):
        _check_responses(responses)
        rewards = self.task.rewards([example] * len(responses), list(responses))
        length_weight = 1.0 - self.correct_weight - self.jitter
        out = []
        for resp, reward in zip(responses, rewards):
            chars = min(len("".join(resp.split())), self.max_len) / self.max_len
            out.append(self.correct_weight * float(reward) + length_weight * chars
                       + self.jitter * unit_hash(self.seed, example.prompt, resp))
        return out


class MajorityVerifier(Verifier):
    """Self-consistency: the fraction of the *other* responses whose extracted answer equals this one's.

        r_i = #{j != i : key(a_j) == key(a_i)} / (n - 1),   r_i = 0 when a_i is None or n == 1

    Answers are compared through `task.answer_key` (whitespace-insensitive by default). Needs no gold answer.
    """

    name = "majority"

    def score(self, example, responses, *, logprobs=None):
        _check_responses(responses)
        keys = []
        for r in responses:
            a = self.task.extract_answer(r)
            keys.append(None if a is None else self.task.answer_key(a))
        counts = Counter(k for k in keys if k is not None)
        others = len(responses) - 1
        if others == 0:
            return [0.0] * len(responses)
        return [0.0 if k is None else (counts[k] - 1) / others for k in keys]


class LogprobVerifier(Verifier):
    """r_i = the mean token log-prob of response i under the sampling policy, as passed in `logprobs`."""

    name = "logprob"

    def score(self, example, responses, *, logprobs=None):
        _check_responses(responses)
        if logprobs is None:
            raise ValueError("the logprob verifier needs logprobs=[...]: the mean token log-prob of each response")
        logprobs = [float(x) for x in (logprobs.tolist() if hasattr(logprobs, "tolist") else logprobs)]
        if len(logprobs) != len(responses):
            raise ValueError(f"logprobs must have one value per response ({len(responses)}), got {len(logprobs)}")
        if any(math.isnan(x) for x in logprobs):
            raise ValueError("logprobs contains NaN")
        return logprobs


class CallableVerifier(Verifier):
    """Wraps a user function: `fn(example, response) -> float` per response, or with `batched=True`
    `fn(example, responses) -> list[float]` for the whole group."""

    name = "callable"

    def __init__(self, task: Task, fn: Callable | None = None, batched: bool = False):
        super().__init__(task)
        if not callable(fn):
            raise ValueError(f"the callable verifier needs fn=<function (example, response) -> float>, got {fn!r}")
        self.fn = fn
        self.batched = bool(batched)

    def score(self, example, responses, *, logprobs=None):
        _check_responses(responses)
        if self.batched:
            out = [float(x) for x in self.fn(example, list(responses))]
            if len(out) != len(responses):
                raise ValueError(f"verifier function {self.fn!r} returned {len(out)} scores for "
                                 f"{len(responses)} responses")
            return out
        return [float(self.fn(example, r)) for r in responses]


def __getattr__(name: str):
    """`bonfast.tasks.verifiers.LearnedVerifier` (an import path for --verifier), defined in bonfast.tasks.learned
    and imported on first use: it needs the model and the trainer."""
    if name == "LearnedVerifier":
        from .learned import LearnedVerifier
        return LearnedVerifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
