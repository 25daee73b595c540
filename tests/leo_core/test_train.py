"""leo_core.train and leo_core.evaluate as a user runs them: real processes, tiny data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from leo_core.synthetic import write_dataset

pytestmark = pytest.mark.integration

TINY = ["--set", "total_examples_per_class=20", "--set", "num_validation_batches=1",
        "--set", "metavalid_batch_size=4", "--set", "checkpoint_steps=3"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, "miniImageNet", scale=0.1, images_per_class=20, seed=5, quiet=True)
    return root


def run(module, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train(root, out, steps, *extra):
    return run("leo_core.train", "--experiment", "mini_5shot", "--data-root", root, "--out", out,
               "--steps", steps, "--log-every", 1, *TINY, *extra)


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """Six steps straight; validation and checkpoints every three."""
    out = tmp_path_factory.mktemp("straight") / "out"
    return out, train(tiny_root, out, 6)


def weights(path):
    with np.load(path / "weights.npz") as data:
        return {k: data[k] for k in data.files}


def test_resume_continues_exactly(tiny_root, trained, tmp_path):
    straight, split = trained[0], tmp_path / "split"
    train(tiny_root, split, 3)
    resumed = train(tiny_root, split, 6, "--resume")
    assert "resumed from" in resumed.stdout and "at step 3" in resumed.stdout
    a, b = weights(straight / "checkpoints/step-6"), weights(split / "checkpoints/step-6")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)
    # Adam moments and the sampler state travel with the checkpoint too.
    state = json.loads((split / "checkpoints/step-6/state.json").read_text())
    assert state["step"] == 6 and "train_rng" in state
    # Metrics continue rather than restart or repeat.
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    pointer = json.loads((split / "checkpoints/latest.json").read_text())
    assert pointer == {"step": 6, "path": "step-6"}
    best = json.loads((split / "checkpoints/best.json").read_text())
    assert best["path"] in {p.name for p in (split / "checkpoints").glob("step-*")}


def test_startup_is_timed_from_the_bootstrap_start(tiny_root, tmp_path, monkeypatch):
    """LEO_START_TIME (set by the pod's bootstrap at its start) is the start-up clock's origin."""
    import time

    monkeypatch.setenv("LEO_START_TIME", f"{time.time() - 100:.3f}")
    out = tmp_path / "out"
    proc = train(tiny_root, out, 1)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    startup = [r for r in records if r["kind"] == "startup"]
    assert len(startup) == 1 and startup[0]["since"] == "bootstrap" and 100 < startup[0]["seconds"] < 700
    assert "after the bootstrap started" in proc.stdout


def test_progress_and_metrics(trained):
    out, proc = trained
    assert "step 3/6" in proc.stdout and "validation at step 6" in proc.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"train", "validation", "startup"}
    # Start-up: from this process's start (no bootstrap) to its first training step.
    startup = [r for r in records if r["kind"] == "startup"]
    assert len(startup) == 1 and startup[0]["step"] == 1 and startup[0]["since"] == "process"
    assert 0 < startup[0]["seconds"] < 600
    assert f"first training step done {startup[0]['seconds']:.1f} s after the process started" in proc.stdout
    # As the original: validation at step 0, before any update, then every 3 steps; the
    # untrained model is the first best, and every record says which step is best.
    validation = [r for r in records if r["kind"] == "validation"]
    assert [r["step"] for r in validation] == [0, 3, 6]
    assert validation[0]["best"] is True and validation[0]["best_step"] == 0
    assert "validation at step 0" in proc.stdout
    best = max(validation, key=lambda r: (r["accuracy"], -r["step"]))
    assert validation[-1]["best_step"] == best["step"]
    train_rec = [r for r in records if r["kind"] == "train"][-1]
    assert {"loss", "accuracy", "steps_per_s", "time"} <= set(train_rec)
    assert np.isfinite(train_rec["loss"]) and 0 <= train_rec["accuracy"] <= 1


def test_evaluate_reports_an_interval(tiny_root, trained, tmp_path):
    out = trained[0]
    result = tmp_path / "result.json"
    proc = run("leo_core.evaluate", "--experiment", "mini_5shot", "--data-root", tiny_root,
               "--checkpoint", out, "--tasks", 40, "--json", result,
               "--set", "total_examples_per_class=20")
    data = json.loads(result.read_text())
    best_step = json.loads((out / "checkpoints/best.json").read_text())["step"]
    assert data["tasks"] == 40 and data["queries_per_class"] == 15 and data["step"] == best_step
    assert 0 < data["ci95"] < 0.2 and 0 <= data["accuracy"] <= 1
    assert "95% interval" in proc.stdout
    # The baselines, on the same tasks: the run's initial weights and nearest-class-mean.
    assert set(data["baselines"]) == {"untrained", "nearest_class_mean"}
    for baseline in data["baselines"].values():
        assert baseline["tasks"] == 40 and 0 <= baseline["accuracy"] <= 1 and 0 < baseline["ci95"] < 0.2
    assert "untrained model" in proc.stdout and "nearest-class-mean" in proc.stdout
    # Evaluation is deterministic for a seed.
    again = tmp_path / "again.json"
    run("leo_core.evaluate", "--experiment", "mini_5shot", "--data-root", tiny_root,
        "--checkpoint", out, "--tasks", 40, "--json", again,
        "--set", "total_examples_per_class=20")
    assert json.loads(again.read_text())["accuracy"] == data["accuracy"]
    assert json.loads(again.read_text())["baselines"] == data["baselines"]


def test_untrained_baseline_is_the_step_0_checkpoint(tiny_root, tmp_path):
    """Evaluating the step-0 checkpoint (the untrained model) gives its own baseline."""
    out = tmp_path / "zero"
    train(tiny_root, out, 1)  # validates steps 0 and 1, keeps step-0 only while it is best
    step0 = tmp_path / "step0.json"
    run("leo_core.evaluate", "--experiment", "mini_5shot", "--data-root", tiny_root,
        "--checkpoint", out / "checkpoints" / "latest.json", "--tasks", 20, "--json", step0,
        "--set", "total_examples_per_class=20")
    latest = json.loads(step0.read_text())
    assert latest["step"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "validation"] == [0, 1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "mini_5shot", "--set", "outer_rl=1"], "unknown config key 'outer_rl'"),
        (["--experiment", "mini_5shot", "--set", "outer_lr=fast"], "outer_lr expects a number"),
        (["--experiment", "mini5shot"], "unknown experiment 'mini5shot'"),
        (["--experiment", "mini_5shot"], "fewer than"),  # 600 - 5 queries do not fit 20 images
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_root, tmp_path, args, message):
    proc = run("leo_core.train", *args, "--data-root", tiny_root, "--out", tmp_path / "out",
               "--steps", 1, check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_missing_data_names_the_file(tmp_path):
    proc = run("leo_core.train", "--experiment", "mini_1shot", "--data-root", tmp_path / "nothing",
               "--out", tmp_path / "out", "--steps", 1, check=False)
    assert proc.returncode == 2
    assert "train_embeddings.pkl" in proc.stderr and "Traceback" not in proc.stderr


# --- damaged checkpoints and arguments checked before the work (issue 22 items 12, 15) -----


def _copy_run(trained, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained[0], out)
    return out


def _one_error_line(proc, *fragments):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], proc.stderr


def test_resume_with_a_bad_rng_state_is_one_line_naming_the_checkpoint(tiny_root, trained,
                                                                     tmp_path):
    out = _copy_run(trained, tmp_path)
    for pointer in ("latest", "best"):  # both name step-6: nothing to fall back to
        (out / f"checkpoints/{pointer}.json").write_text('{"step": 6, "path": "step-6"}')
    state_file = out / "checkpoints/step-6/state.json"
    state = json.loads(state_file.read_text())
    state["train_rng"] = {"bit_generator": "PCG64", "state": "garbage"}
    state_file.write_text(json.dumps(state))
    proc = run(
        "leo_core.train", "--experiment", "mini_5shot", "--data-root", tiny_root, "--out", out,
        "--steps", 7, *TINY, "--resume", check=False)
    _one_error_line(proc, str(out / "checkpoints/step-6"), "damaged")


def test_resume_falls_back_to_the_best_checkpoint_when_latest_is_truncated(tiny_root, trained,
                                                                         tmp_path):
    import shutil

    out = _copy_run(trained, tmp_path)
    checkpoints = out / "checkpoints"
    shutil.copytree(checkpoints / "step-6", checkpoints / "step-5")
    state = json.loads((checkpoints / "step-5/state.json").read_text())
    (checkpoints / "step-5/state.json").write_text(json.dumps({**state, "step": 5}))
    (checkpoints / "best.json").write_text('{"step": 5, "path": "step-5", "accuracy": 0.2}')
    weights_file = checkpoints / "step-6/weights.npz"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    proc = train(tiny_root, out, 7, "--resume")
    assert "latest checkpoint is damaged" in proc.stdout and str(weights_file) in proc.stdout
    assert "at step 5" in proc.stdout
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 7


def test_log_every_below_1_is_refused_before_the_data_load(tmp_path):
    for value in ("0", "-1"):
        proc = run("leo_core.train", "--experiment", "mini_5shot", "--data-root",
                   tmp_path / "nothing", "--out", tmp_path / "out", "--log-every", value,
                   check=False)
        _one_error_line(proc, "--log-every must be at least 1")


@pytest.mark.parametrize("args, message", [
    (["--queries", "0"], "--queries must be at least 1"),
    (["--json", "/nonexistent/dir/x.json"], "not a writable directory"),
])
def test_evaluate_checks_arguments_before_the_work(trained, tmp_path, args, message):
    proc = run("leo_core.evaluate", "--experiment", "mini_5shot", "--data-root",
               tmp_path / "nothing", "--checkpoint", trained[0], *args, check=False)
    _one_error_line(proc, message)


def test_msrun_scheduler_of_one_worker_does_not_train(tiny_root, tmp_path, monkeypatch):
    """msrun runs the script in its scheduler process too; with one worker nothing forms a
    cluster there, and that process used to train a duplicate run into the same output."""
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    monkeypatch.setenv("MS_WORKER_NUM", "1")
    out = tmp_path / "out"
    proc = train(tiny_root, out, 1)
    assert not out.exists() and "training" not in proc.stdout


def _graph_dirs(cache):
    return sorted(p.parent.parent.name for p in cache.glob("*/rank_0/graph_cache"))


def test_the_first_restart_finds_the_fresh_runs_compile_cache_warm_and_trains_exactly_as_no_cache(
        tiny_root, trained, tmp_path, monkeypatch):
    """leo_core.compile_cache: a fresh run compiles the training step before its step-0
    validation, as a resumed run does, so their graphs share one cache folder and a
    restart loads them (before, the first restart compiled everything again: another
    order, another folder); a warm cache trains exactly as no cache."""
    from leo_core import compile_cache

    cache = tmp_path / "cache"
    monkeypatch.setenv(compile_cache.ENV, str(cache))
    split = tmp_path / "split"
    first = train(tiny_root, split, 3)
    assert f"compile cache: {cache}" in first.stdout
    assert "Use the compilation cache" not in first.stderr  # cold: nothing to load
    fresh_keys = _graph_dirs(cache)
    assert len(fresh_keys) == 1
    resumed = train(tiny_root, split, 6, "--resume")  # the first restart
    assert _graph_dirs(cache) == fresh_keys and "Use the compilation cache" in resumed.stderr
    again = tmp_path / "again"  # the same two runs, now with the warm cache
    train(tiny_root, again, 3)
    train(tiny_root, again, 6, "--resume")
    assert _graph_dirs(cache) == fresh_keys
    straight = trained[0]  # six steps, no cache
    for run in (split, again):
        a, b = weights(straight / "checkpoints/step-6"), weights(run / "checkpoints/step-6")
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=f"{run.name} {name}")
    validations = [[(r["step"], r["accuracy"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                    if r["kind"] == "validation"] for run in (straight, split, again)]
    assert validations[0] == validations[1] == validations[2] and len(validations[0]) == 3


START_UP_PROBE = """
import gc, json, os, sys, threading
from leo_core import runtime_threads, train
seen = {"order": []}
load, compile_step, validate, step = (train.load_splits, train.Trainer.compile_training_step,
                                      train.Trainer.validate, train.Trainer.train_step)
def loading(*a):
    seen["load_thread"] = threading.current_thread() is not threading.main_thread()
    return load(*a)
def compiling(self):
    seen["order"].append("compile")
    return compile_step(self)
def validating(self):
    seen["order"].append(f"validate {self.step}")
    return validate(self)
def stepping(self):
    seen["order"].append(f"step {self.step}")
    seen.setdefault("gc_in_first_step", gc.isenabled())
    return step(self)
train.load_splits, train.Trainer.compile_training_step = loading, compiling
train.Trainer.validate, train.Trainer.train_step = validating, stepping
code = train.main(sys.argv[1:])
seen["gc_after"], seen["frozen"] = gc.isenabled(), gc.get_freeze_count() > 0
usable, ids = sorted(os.sched_getaffinity(0)), runtime_threads.runtime_thread_ids()
seen["runtime_confined"] = bool(ids) and all(sorted(os.sched_getaffinity(t)) == usable[1:] for t in ids)
print("PROBE " + json.dumps(seen))
sys.exit(code)
"""


def test_start_up_reads_data_beside_the_import_compiles_the_step_first_without_gc(tiny_root, tmp_path):
    """Start-up (issue 25): the data is read in a second thread while MindSpore is imported,
    the training step compiles before the step-0 validation (one compile order for fresh
    and resumed runs), and no garbage collection runs until the first step is done; after
    it, MindSpore's runtime threads leave one core to the prefetch (leo_core.runtime_threads)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", START_UP_PROBE, "--experiment", "mini_5shot", "--data-root",
                           str(tiny_root), "--out", str(out), "--steps", "2", "--log-every", "1", *TINY],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})  # its own runtime-threads lock
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(proc.stdout.split("PROBE ")[1])
    assert seen == {"load_thread": True, "order": ["compile", "validate 0", "step 0", "step 1", "validate 2"],
                    "gc_in_first_step": False, "gc_after": True, "frozen": True,
                    "runtime_confined": len(os.sched_getaffinity(0)) >= 2}
