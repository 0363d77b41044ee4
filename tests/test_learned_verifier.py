"""bonfast.tasks.learned: the learned verifier is deterministic, cached by its config (a second build loads), refuses
a verifier trained on test prompts, reports its calibration, scores in (0, 1); `--verifier learned` / `verifier_path`
validation. Tiny sizes throughout (a 1-layer D = 32 policy, a few dozen prompts): seconds on CPU."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bonfast import cli, tasks
from bonfast.build import build
from bonfast.config import preset
from bonfast.tasks import learned

# a base policy that gets some level-1 problems right after 60 warm-start steps, and a small recipe
POLICY = {"tiny_dim": 32, "tiny_layers": 1, "tiny_heads": 2, "sft_steps": 60, "sft_batch": 32, "task_levels": (1,),
          "device": "cpu", "progress": False}
SMALL = {"prompts": 48, "samples": 4, "temperatures": (0.5, 1.0), "steps": 20, "batch": 32, "heldout_prompts": 16}


def vconfig(seed=1, **recipe):
    return learned.LearnedVerifierConfig.from_train_config(preset("default", seed=seed, **POLICY),
                                                           torch.device("cpu"), **{**SMALL, **recipe})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One verifier trained into its own cache: (path, its config, the cache dir)."""
    cache = tmp_path_factory.mktemp("learned-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BONFAST_CACHE", str(cache))
        vcfg = vconfig()
        path = learned.ensure(vcfg, "cpu", log=lambda msg: None)
    return path, vcfg, cache


@pytest.fixture
def task():
    return tasks.get_task("arithmetic", levels=(1,))


def test_deterministic_given_the_seed(trained, tmp_path, monkeypatch):
    path, vcfg, cache = trained
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path))
    # the warm start comes from the first cache (it has its own determinism tests); the verifier is retrained
    for name in os.listdir(cache):
        if name.startswith("warmstart-"):
            os.link(cache / name, tmp_path / name)
    again = learned.ensure(vcfg, "cpu", log=lambda msg: None)
    assert again != path and os.path.basename(again) == os.path.basename(path)
    with safe_open(path, "pt") as a, safe_open(again, "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    reports = [json.load(open(learned.report_path(p))) for p in (path, again)]
    assert reports[0]["heldout"] == reports[1]["heldout"]
    other = vconfig(seed=2)
    assert other.key() != vcfg.key() and learned.verifier_path(other) != again  # one verifier per seed


def test_cached_by_config_second_build_loads(trained, monkeypatch, task):
    path, vcfg, cache = trained
    monkeypatch.setenv("BONFAST_CACHE", str(cache))

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached verifier")
    monkeypatch.setattr(learned, "_train", no_training)
    assert learned.ensure(vcfg, "cpu") == path
    # through a run's config (`--verifier learned`): the RECIPE on the run's warm start, found in the cache
    monkeypatch.setattr(learned, "RECIPE", {**learned.RECIPE, **SMALL})
    cfg = preset("default", seed=1, verifier="learned", **POLICY).validate()
    _, _, _, verifier = build(cfg, torch.device("cpu"))
    assert isinstance(verifier, learned.LearnedVerifier) and verifier.path == path
    assert vconfig(steps=21).key() != vcfg.key() and vconfig(lr=1e-4).key() != vcfg.key()  # a recipe change: new key


def _rewrite(path, out, **meta_changes):
    with safe_open(path, "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in meta_changes.items():
        if key == "split":
            config = json.loads(meta["config"])
            config["split"] = value
            meta["config"] = json.dumps(config)
        else:
            meta[key] = value
    save_file(tensors, out, metadata=meta)
    return str(out)


def test_refuses_a_verifier_trained_on_test_prompts(trained, tmp_path, task):
    path, _, _ = trained
    with pytest.raises(ValueError, match="LearnedVerifierConfig.split: expected 'train'"):
        vconfig(split="test")
    on_test = _rewrite(path, tmp_path / "test-split.safetensors", split="test")
    with pytest.raises(ValueError, match="trained on training prompts only.*'test' split"):
        tasks.get_verifier("learned", task, path=on_test)
    # a file that says "train" but whose training prompts include test problems
    test_prompt = task.examples("test", n=1)[0].prompt
    with safe_open(path, "pt") as f:
        prompts = json.loads(f.metadata()["train_prompts"])
    leaked = _rewrite(path, tmp_path / "leaked.safetensors", train_prompts=json.dumps(prompts + [test_prompt]))
    with pytest.raises(ValueError, match="1 of its .* training prompts are test prompts"):
        learned.LearnedVerifier(task, path=leaked)
    with pytest.raises(ValueError, match="task 'arithmetic'"):
        learned.load(path, _OtherTask(), "cpu")


class _OtherTask:
    name = "other"


def test_calibration_report_fields(trained):
    path, vcfg, _ = trained
    report = json.load(open(learned.report_path(path)))
    assert report["config"]["split"] == "train" and report["config"]["seed"] == 1
    assert report["train"]["sequences"] == SMALL["prompts"] * SMALL["samples"]
    held = report["heldout"]
    assert held["prompts"] == SMALL["heldout_prompts"] and held["samples"] == SMALL["samples"]
    for t in ("0.5", "1"):
        m = held[t]
        assert {"n", "positives", "base_rate", "threshold", "accuracy", "auc", "fpr", "fnr", "brier", "mean_score",
                "bo@4", "pass@4", "pass@1", "auc_within", "mixed_prompts"} <= set(m)
        assert m["n"] == SMALL["heldout_prompts"] * SMALL["samples"] and m["threshold"] == 0.5
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["brier"] <= 1 and m["pass@1"] <= m["pass@4"] + 1e-12
        assert m["fpr"] is None or 0 <= m["fpr"] <= 1
    assert "| T | samples |" in learned.format_calibration(report)


def test_heldout_calibration_recomputes_the_report(trained, monkeypatch):
    """The report's held-out numbers, recomputed from the file alone (same prompts, same samples; the warm start
    from the cache); a temperature subset gives that temperature's numbers."""
    path, _, cache = trained
    monkeypatch.setenv("BONFAST_CACHE", str(cache))
    with open(learned.report_path(path)) as f:
        report = json.load(f)
    again = learned.heldout_calibration(path, temperatures=(1.0,))
    assert set(again) == {"prompts", "samples", "1"}
    old, new = report["heldout"]["1"], again["1"]
    assert {k: new[k] for k in old} == old
    assert new["auc_within"] is None or 0 <= new["auc_within"] <= 1
    with pytest.raises(ValueError, match="not found"):
        learned.heldout_calibration(path + ".missing")


def test_learned_selection_script_reports_only_the_same_realization(trained, monkeypatch, tmp_path):
    """experiments/learned_selection.py: a seed whose committed report the cache reproduces gets its within-prompt
    AUC; one whose numbers differ (another realization), or whose verifier is not cached, is left out, saying why."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
    import learned_selection
    path, _, cache = trained
    monkeypatch.setenv("BONFAST_CACHE", str(cache))
    with open(learned.report_path(path)) as f:
        report = json.load(f)
    data = tmp_path / "data"
    data.mkdir()
    for seed, shift in ((1, 0.0), (2, 0.01)):
        held = {**report["heldout"], "1": {**report["heldout"]["1"], "auc": report["heldout"]["1"]["auc"] + shift}}
        with open(data / f"verifier-seed{seed}.json", "w") as f:
            json.dump({**report, "path": os.path.basename(path), "heldout": held}, f)
    with open(data / "verifier-seed3.json", "w") as f:
        json.dump({**report, "path": "learned-verifier-elsewhere.safetensors"}, f)
    rows = learned_selection.main(["--seeds", "1,2,3,4", "--data", str(data), "--out", str(tmp_path / "sel")])
    assert rows[0]["seed"] == 1 and "left_out" not in rows[0] and rows[0]["auc"] == report["heldout"]["1"]["auc"]
    assert rows[0]["mixed_prompts"] >= 0 and "auc_within" in rows[0]
    assert "another realization" in rows[1]["left_out"] and "auc" in rows[1]["left_out"]
    assert "not in this machine's cache" in rows[2]["left_out"] and "no committed report" in rows[3]["left_out"]
    md = open(tmp_path / "sel.md").read()
    assert "Left out: seed 2: another realization" in md


def test_calibration_metrics_exact():
    # AUC by enumerating every (positive, negative) pair, ties counting one half
    r = torch.tensor([0.9, 0.4, 0.4, 0.7, 0.1, 0.4, 0.8])
    y = torch.tensor([1, 0, 1, 0, 0, 1, 1])
    m = learned.calibration_metrics(r, y, threshold=0.5)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, ya in zip(r, y) for b, yb in zip(r, y)
             if ya == 1 and yb == 0]
    assert m["auc"] == pytest.approx(sum(pairs) / len(pairs))
    assert m["fpr"] == pytest.approx(1 / 3) and m["fnr"] == pytest.approx(2 / 4)  # 0.7 accepted; 0.4, 0.4 rejected
    assert m["accuracy"] == pytest.approx(4 / 7) and m["base_rate"] == pytest.approx(4 / 7)
    assert m["brier"] == pytest.approx(float(((r.double() - y) ** 2).mean()))
    assert learned.calibration_metrics([0.3, 0.6], [0, 0])["auc"] is None  # one class: no AUC
    with pytest.raises(ValueError, match="same non-zero number"):
        learned.calibration_metrics([0.1, 0.2], [1])


def test_within_prompt_auc_exact_and_blind_to_prompt_difficulty():
    # per prompt: every (correct, wrong) pair enumerated, ties one half; prompts without both classes left out
    r = torch.tensor([[0.9, 0.4, 0.4, 0.7], [0.2, 0.2, 0.1, 0.3], [0.5, 0.6, 0.7, 0.8]])
    y = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 1], [1, 1, 1, 1]])

    def brute(rs, ys):
        pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, ya in zip(rs, ys) for b, yb in zip(rs, ys)
                 if ya == 1 and yb == 0]
        return sum(pairs) / len(pairs)
    got = learned.within_prompt_auc(r, y)
    assert got["mixed_prompts"] == 2
    assert got["auc_within"] == pytest.approx((brute(r[0], y[0]) + brute(r[1], y[1])) / 2, abs=1e-15)
    # a verifier that scores only how easy the prompt is: pooled AUC near 1, within-prompt AUC exactly 1/2
    gen = torch.Generator().manual_seed(0)
    easy = torch.linspace(0.05, 0.95, 64)
    labels = (torch.rand(64, 8, generator=gen) < easy[:, None]).double()
    scores = easy[:, None].expand(64, 8)
    assert learned.calibration_metrics(scores, labels)["auc"] > 0.75
    assert learned.within_prompt_auc(scores, labels)["auc_within"] == 0.5
    # anti-ranking within every prompt: 0, whatever the pooled AUC
    assert learned.within_prompt_auc(-labels + easy[:, None], labels)["auc_within"] == 0.0
    assert learned.within_prompt_auc(r[2:], y[2:]) == {"auc_within": None, "mixed_prompts": 0}
    with pytest.raises(ValueError, match=r"same \[G, n\] shape"):
        learned.within_prompt_auc(r[0], y[0])


def test_scores_shape_range_and_import_paths(trained, task):
    path, vcfg, _ = trained
    verifier = tasks.get_verifier("learned", task, path=path)
    ex = task.examples("test", n=2, seed=3)
    responses = [ex[0].answer, "7", "", "123456", ex[0].answer]
    r = verifier.score(ex[0], responses)
    assert len(r) == len(responses) and all(isinstance(x, float) and 0 < x < 1 for x in r)
    assert r[0] == r[-1] and verifier.score(ex[0], responses) == r  # a function of (prompt, response)
    many = verifier.score_many(ex, [responses, responses[:2]])
    assert [len(m) for m in many] == [5, 2] and many[0] == pytest.approx(r, abs=1e-6)
    by_path = tasks.get_verifier("bonfast.tasks.verifiers:LearnedVerifier", task, path=path)
    assert by_path.score(ex[0], responses) == pytest.approx(r, abs=1e-6)
    with pytest.raises(ValueError, match="expected path="):
        tasks.get_verifier("bonfast.tasks.learned:LearnedVerifier", task)
    # calibration on samples of any policy (here the untrained tiny model: it drifts from the base policy)
    cfg = preset("default", seed=1, **POLICY)
    policy, tokenizer, _, _ = build(cfg, torch.device("cpu"))
    out = learned.calibration(verifier, policy, tokenizer, task, ex, n=4, temperatures=(1.0,), seed=5)
    assert out["1"]["n"] == 8 and out["prompts"] == 2 and 0 <= out["1"]["accuracy"] <= 1


@pytest.mark.parametrize("argv,needle", [
    (["--verifier_path", "x.safetensors"], "TrainConfig.verifier_path: expected None unless verifier is 'learned'"),
    (["--verifier", "learned", "--verifier_path", "/no/such/file"], "TrainConfig.verifier_path: expected an existing"),
])
def test_cli_validation_of_the_learned_verifier(capsys, argv, needle):
    assert cli.main(["train", "--steps", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_config_refuses_learned_without_the_tiny_model(tmp_path):
    cfg = preset("default", verifier="learned", model=str(tmp_path))
    with pytest.raises(ValueError, match="TrainConfig.verifier: .*tiny model"):
        cfg.validate()
