"""`leo-launch sweep` without training: trial expansion, bad input (one line, exit 2,
nothing submitted), the summary read from published outputs, and the sweep on the
in-memory Kubernetes API with its --parallel bound respected across `resume`."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from launcher.backends import sweeps
from launcher.backends.kubernetes import KubernetesBackend
from launcher.outputs import sweep_summary as ss
from launcher.spec import sweep as sw
from launcher.spec.contract import LABEL_SWEEP
from launcher.spec.jobspec import JobSpec, build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster
from tests.launcher.render_helpers import run_cli

BASE = ["sweep", "--accel", "cpu", "--cards", "1", "--steps", "3"]


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    (tmp_path / "data").mkdir()
    return tmp_path


# ------------------------------------------------------------------ trials


def test_trials_are_the_cross_product_of_experiments_grid_and_seeds():
    grid = sw.parse_grid(["outer_lr=1e-4,2e-4", "num_latents=32,64"])
    trials = sw.expand("s", ["mini_1shot", "mini_5shot"], sw.parse_seeds("2"), grid, [], None)
    assert len(trials) == 2 * 4 * 2
    assert trials[0] == sw.Trial("s-00", "mini_1shot", 0, (("outer_lr", "1e-4"), ("num_latents", "32")))
    assert {t.seed for t in trials} == {0, 1} and len({t.name for t in trials}) == 16
    assert sw.parse_seeds("3,7") == [3, 7]


def test_random_search_is_seeded_and_within_its_range():
    ranges = sw.parse_random(["outer_lr=1e-5:1e-3:log", "num_latents=16:128"])
    first = sw.expand("r", ["mini_1shot"], [0], [], ranges, 5, random_seed=3)
    assert first == sw.expand("r", ["mini_1shot"], [0], [], ranges, 5, random_seed=3)
    assert first != sw.expand("r", ["mini_1shot"], [0], [], ranges, 5, random_seed=4)
    for trial in first:
        values = dict(trial.params)
        assert 1e-5 <= float(values["outer_lr"]) <= 1e-3
        assert 16 <= int(values["num_latents"]) <= 128


def test_a_trial_spec_carries_its_seed_and_sweep_into_labels_and_job_yaml():
    spec = build_job_spec(experiment="mini_1shot", accelerator="cpu", cards=1, name="s-0", seed=7, sweep="s")
    assert spec.labels()[LABEL_SWEEP] == "s"
    again = JobSpec.from_yaml(spec.to_yaml())
    assert (again.seed, again.sweep) == (7, "s")
    assert "seed" not in build_job_spec(experiment="mini_1shot", accelerator="cpu", cards=1).to_dict()


@pytest.mark.parametrize(("args", "message"), [
    (["--exp", "mini_1shot", "--grid", "no_such_key=1,2"], "unknown config key 'no_such_key'"),
    (["--exp", "mini_1shot", "--grid", "outer_lr="], "the grid is empty"),
    (["--exp", "mini_1shot", "--grid", "outer_lr=abc"], "outer_lr expects a number"),
    (["--exp", "mini_1shot", "--random", "outer_lr=1:0"], "need lo < hi"),
    (["--exp", "mini_1shot", "--random", "outer_lr=1e-4:1e-3"], "--random needs --trials"),
    (["--exp", "mini_1shot", "--seeds", "17"], "more than 16"),
    (["--exp", "mini_1shot,nope"], "unknown experiment 'nope'"),
    (["--exp", "mini_1shot", "--grid", "outer_lr=1e-4,1e-3", "--set", "outer_lr=1e-3"], "the key is swept"),
    (["--exp", "mini_1shot", "--parallel", "0"], "--parallel must be at least 1"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_submitted(state, capsys, args, message):
    code, out, err = run_cli(capsys, [*BASE, *args, "--backend", "local", "--data-url", str(state / "data")])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (state / "state").exists()  # no record, no job folder


def test_a_name_clash_with_an_existing_sweep_is_refused(state, capsys, monkeypatch):
    sweep = sweeps.Sweep(name="taken", backend="local", parallel=1, trials=[], specs={})
    sweeps.save(sweep)
    code, _, err = run_cli(capsys, [*BASE, "--exp", "mini_1shot", "--name", "taken", "--backend", "local",
                                    "--data-url", str(state / "data")])
    assert code == 2 and "sweep 'taken' exists" in err


# ------------------------------------------------------------------ summary


def publish_run(root: Path, name: str, *, val: float, test: float, experiment: str = "mini_1shot"):
    """What a finished trial leaves under <train_url>/<name>: metrics.jsonl and result.json."""
    out = root / name
    out.mkdir(parents=True)
    records = [{"step": 1, "kind": "train", "loss": 1.0, "accuracy": 0.3, "steps_per_s": 1.0, "time": 1.0},
               {"step": 2, "kind": "validation", "accuracy": val - 0.05, "ci95": 0.01, "loss": 1.0,
                "tasks": 10, "best": True, "time": 2.0},
               {"step": 4, "kind": "validation", "accuracy": val, "ci95": 0.01, "loss": 1.0,
                "tasks": 10, "best": True, "time": 3.0}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "result.json").write_text(json.dumps({"accuracy": test, "ci95": 0.01, "tasks": 10, "step": 4,
                                                 "experiment": experiment}))


def test_summary_groups_by_swept_keys_and_picks_the_best_by_validation_not_test(tmp_path):
    grid = sw.parse_grid(["outer_lr=1e-4,1e-3"])
    trials = sw.expand("s", ["mini_1shot"], [0, 1], grid, [], None)
    # outer_lr=1e-4 validates better; 1e-3 tests better: the best is 1e-4.
    scores = {"s-0": (0.60, 0.50), "s-1": (0.62, 0.52), "s-2": (0.50, 0.70), "s-3": (0.52, 0.72)}
    for name, (val, test) in scores.items():
        publish_run(tmp_path, name, val=val, test=test)
    groups = ss.summarise(ss.load_trials(str(tmp_path), trials))
    assert [(g.params, g.best) for g in groups] == [((("outer_lr", "1e-4"),), True),
                                                    ((("outer_lr", "1e-3"),), False)]
    mean, ci = groups[0].validation
    assert mean == pytest.approx(0.61)
    assert ci == pytest.approx(12.706 * 0.01414214 / 2 ** 0.5, rel=1e-4)  # t(0.975, 1) · sd / √n
    assert groups[1].test[0] == pytest.approx(0.71)
    table = ss.table(groups)
    assert "OUTER_LR" in table and "61.00 ± 12.71" in table and "61.76 ± 0.08" in table  # paper beside
    assert ss.markdown(groups).splitlines()[1].startswith("|---|")
    assert ss.to_csv(groups).splitlines()[0].startswith("EXPERIMENT,OUTER_LR,SEEDS")
    assert ss.to_json(groups)[0]["published_percent"]["modelzoo"] == {"mean": 59.59, "ci95": 0.16}


def test_a_trial_without_outputs_leaves_its_group_partial(tmp_path):
    trials = sw.expand("s", ["glyphs_1shot"], [0, 1], [], [], None)
    publish_run(tmp_path, "s-0", val=0.5, test=0.4, experiment="glyphs_1shot")
    (group,) = ss.summarise(ss.load_trials(str(tmp_path), trials))
    assert (group.seeds, group.trials, group.validation[1], group.published) == ((0,), 2, None, {})
    assert "1/2" in ss.table([group])


def test_report_reads_a_published_sweep_and_draws_every_trial(state, capsys):
    pytest.importorskip("matplotlib")
    runs = state / "runs"
    trials = sw.expand("pub", ["mini_1shot", "mini_5shot"], [0], [], [], None)
    sweep = sweeps.Sweep(name="pub", backend="local", parallel=1, trials=trials, specs={},
                         train_url=str(runs), submitted=[t.name for t in trials])
    sweeps.publish(sweep)
    publish_run(runs, "pub-0", val=0.5, test=0.45)
    publish_run(runs, "pub-1", val=0.6, test=0.65, experiment="mini_5shot")
    png = state / "curves.png"
    code, out, err = run_cli(capsys, ["sweep", "report", str(runs / "pub"), "-o", "json", "--png", str(png)])
    assert code == 0, err
    data = json.loads(out)
    assert [g["best"] for g in data["groups"]] == [False, True]
    assert png.read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------ the in-memory Kubernetes API


def test_the_sweep_renders_and_submits_on_kubernetes_within_its_parallel_bound(state, capsys, monkeypatch, s3_env):
    bucket = s3_env.create_bucket(f"leo-sweep-{secrets.token_hex(4)}")
    api = FakeAPI()
    backend = KubernetesBackend(fake_cluster(api))
    monkeypatch.setattr("launcher.cli.cmd_submit.get_backend", lambda *a, **k: backend)
    monkeypatch.setattr("launcher.backends.get_backend", lambda *a, **k: backend)

    def jobs():
        return {key[3]: obj for key, obj in api.objects.items() if key[1] == "Job"}

    code, out, err = run_cli(capsys, [*BASE, "--exp", "mini_1shot,mini_5shot", "--seeds", "2", "--name", "k",
                                      "--backend", "k8s", "--parallel", "2", "--detach",
                                      "--data-url", "s3://data/tiny", "--train-url", f"s3://{bucket}/train",
                                      # pods cannot use local paths: the test S3 server
                                      "--storage-endpoint", s3_env.endpoint])
    assert code == 0, err
    assert sorted(jobs()) == ["k-0", "k-1"] and "2 submitted, 2 waiting" in out
    assert {j["metadata"]["labels"][LABEL_SWEEP] for j in jobs().values()} == {"k"}
    code, _, err = run_cli(capsys, ["sweep", "resume", "k", "--detach"])
    assert code == 0 and sorted(jobs()) == ["k-0", "k-1"], err  # both still run: nothing more
    api.objects[("batch/v1", "Job", "default", "k-0")]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    code, _, err = run_cli(capsys, ["sweep", "resume", "k", "--detach"])
    assert code == 0 and sorted(jobs()) == ["k-0", "k-1", "k-2"], err
    assert JobSpec.from_dict(sweeps.load("k").specs["k-1"]).seed == 1
    assert any("seed: 1" in json.dumps(obj) for key, obj in api.objects.items() if key[3].startswith("k-1"))
    code, out, _ = run_cli(capsys, ["sweep", "status", "k"])
    assert code == 0
    column = out.splitlines()[0].split().index("PHASE")
    lines = {line.split()[0]: line.split()[column] for line in out.splitlines()[1:5]}
    assert lines == {"k-0": "Succeeded", "k-1": "Pending", "k-2": "Pending", "k-3": "Waiting"}
    code, out, _ = run_cli(capsys, ["sweep", "cancel", "k"])
    assert code == 0 and jobs() == {}
    code, _, err = run_cli(capsys, ["sweep", "resume", "k"])
    assert code == 2 and "cancelled" in err


def test_a_first_trial_refused_by_pre_flight_leaves_no_sweep(state, capsys, monkeypatch):
    api = FakeAPI()
    backend = KubernetesBackend(fake_cluster(api))
    monkeypatch.setattr("launcher.cli.cmd_submit.get_backend", lambda *a, **k: backend)
    code, _, err = run_cli(capsys, [*BASE, "--exp", "mini_1shot", "--name", "k", "--backend", "k8s",
                                    "--data-url", "s3://data/tiny", "--storage-secret", "missing"])
    assert code == 1 and "no Secret missing" in err
    assert not sweeps.record_path("k").exists() and not [k for k in api.objects if k[1] == "Job"]
