"""Grading throughput of the sandbox: programs per second for the 164 HumanEval canonical solutions.

    python benches/bench_sandbox.py [--repeats 2]

Runs `get_task("humaneval", test_fraction=1.0).rewards` on all canonical solutions (all must score 1) with the
default Sandbox (workers = CPU count) and prints programs/s per repeat. Works against any checkout on
PYTHONPATH (the API it uses predates the call-based sandbox).
"""
import argparse
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from bonfast.tasks import get_task

    task = get_task("humaneval", test_fraction=1.0)
    examples = task.examples("test")
    responses = [e.meta["solution"] for e in examples]
    print(f"isolation={task.sandbox.isolation} workers={task.sandbox.workers} cpus={os.cpu_count()}")
    for r in range(args.repeats):
        start = time.perf_counter()
        rewards = task.rewards(examples, responses)
        dt = time.perf_counter() - start
        mean = sum(rewards) / len(rewards)
        print(f"repeat {r}: {len(examples) / dt:.1f} programs/s ({dt:.1f} s), mean reward {mean:.4f}")


if __name__ == "__main__":
    main()
