"""Rollouts and their judgement: sample n responses per prompt, decode them, turn them into rewards and scores.

    prompts --sample (Engine, seeded)--> token ids [G][n] --decode--> texts
            --task.rewards--> R [G, n]   (0 for a response cut at max_new_tokens, unless reward_truncated)
            --verifier.score--> r [G, n] (the signal Best-of-N selection uses)
            --task.extract_answer--> answers [G][n] (majority voting)

Both the trainer and the evaluation use these functions, so a sample is judged the same way in both.
"""
from __future__ import annotations

import torch

from bonfast import tasks

__all__ = ["decode", "encode_response", "stop_ids", "sample", "judge", "is_binary"]


def decode(tokenizer, ids: list[int]) -> str:
    """Text of a response, special tokens dropped (every tokenizer used here takes `skip_special_tokens`)."""
    return tokenizer.decode(ids, skip_special_tokens=True)


def encode_response(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Token ids of a response text, capped at max_tokens, ending with <eos>."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[:max_tokens - 1] + [tokenizer.eos_token_id]


def stop_ids(tokenizer) -> tuple[int, ...]:
    """<eos> plus the end-of-turn tokens of common chat templates the tokenizer knows."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = getattr(tokenizer, "convert_tokens_to_ids", lambda t: None)(tok)
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    return tuple(i for i in ids if i is not None)


def sample(cfg, engine, tokenizer, prompts: list[list[int]], n: int, *, temperature: float, seed: int):
    """`engine.sample` with the config's sampling settings (length cap, top-p, top-k, stop tokens)."""
    return engine.sample(prompts, n, max_new_tokens=cfg.max_new_tokens, temperature=temperature, top_p=cfg.top_p,
                         top_k=cfg.top_k, stop_token_ids=stop_ids(tokenizer), seed=seed)


def judge(task, verifier, examples, roll, tokenizer, reward_truncated: bool = False):
    """Rewards R [G, n], verifier scores r [G, n] (float64) and extracted answers for a batch of rollouts.

    A response cut at max_new_tokens gets reward 0 unless `reward_truncated`: otherwise an answer extractor's
    fallback (e.g. "the last number in the text") can score truncated rambling as correct by luck."""
    texts = [[decode(tokenizer, toks) for toks in per_prompt] for per_prompt in roll.tokens]
    flat_ex = [ex for ex, per_prompt in zip(examples, texts) for _ in per_prompt]
    flat_txt = [t for per_prompt in texts for t in per_prompt]
    raw = torch.tensor(task.rewards(flat_ex, flat_txt), dtype=torch.float64).view(len(examples), -1)
    R = raw
    if not reward_truncated:
        stopped = torch.tensor([[reason == "stop" for reason in row] for row in roll.finish_reasons])
        R = raw * stopped
    if isinstance(verifier, tasks.OracleVerifier) and verifier.task is task:
        r = raw  # the oracle's score is the task reward: do not grade (e.g. run in the sandbox) every response twice
    else:
        scores = []
        for ex, per_prompt, lps in zip(examples, texts, roll.logprobs):
            mean_lp = [float(lp.mean()) if lp.numel() else 0.0 for lp in lps]
            scores.append(verifier.score(ex, per_prompt, logprobs=mean_lp))
        r = torch.tensor(scores, dtype=torch.float64)
    answers = [[task.extract_answer(t) for t in per_prompt] for per_prompt in texts]
    return R, r, answers


def is_binary(R: torch.Tensor) -> bool:
    """Whether every reward is 0 or 1 (pass@k applies); otherwise evaluation reports max@k."""
    return bool(((R == 0) | (R == 1)).all())
