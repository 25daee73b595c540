"""The CLI's conventions (issue 24): -o is a format and --out-dir a folder, --version,
examples and grouped help, job files for render and submit, the image-registry warning;
and the job options' table (launcher.spec.fields) matching the JobSpec."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from launcher.cli.main import COMMANDS, build_parser
from launcher.spec import fields
from launcher.spec.jobspec import JobSpec
from launcher.util.userfile import MAX_BYTES
from tests.launcher.render_helpers import run_cli

JOB = ["--exp", "mini_1shot", "--accel", "cpu", "--cards", "2", "--train-url", "s3://leo-out/runs",
       "--storage-secret", "creds", "--image", "registry.example.com/leo-launch:cpu"]


def _subparsers():
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices


def test_version_names_leo_launch_mindspore_and_python_without_importing_mindspore():
    code = ("import sys; from launcher.cli.main import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    print(e.code, 'mindspore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    version = out.splitlines()[0]
    assert version == (f"leo-launch {metadata.version('leo-launch')}, MindSpore {metadata.version('mindspore')}, "
                       f"Python {sys.version.split()[0]}")
    assert out.splitlines()[1] == "0 False"


def test_every_command_has_examples_and_o_is_a_format():
    parsers = _subparsers()
    assert sorted(parsers) == sorted(COMMANDS)
    for name, parser in parsers.items():
        assert parser.epilog.startswith("examples:\n") and f"leo-launch {name}" in parser.epilog, name
        for action in parser._actions:
            if "-o" in action.option_strings:
                assert action.choices and set(action.choices) <= {"table", "yaml", "json", "name"}, name
    for name in ("status", "logs", "list", "cancel", "pull", "report", "render", "submit"):
        flags = {f for a in parsers[name]._actions for f in a.option_strings}
        assert {"-n", "--namespace", "--context"} <= flags, name


def test_submit_help_is_grouped_as_the_options_declare():
    parser = _subparsers()["submit"]
    titles = [g.title for g in parser._action_groups if g._group_actions]
    assert titles == ["options", *fields.GROUPS]
    group_of = {a.dest: g.title for g in parser._action_groups for a in g._group_actions}
    for option in fields.FIELDS:
        if option.flag:
            assert group_of[option.field] == option.group, option.field
    help_text = parser.format_help()
    from leo_core.config import experiment_names

    assert all(name in help_text for name in experiment_names())


def test_every_jobspec_field_is_declared_once_in_the_table():
    spec_fields = [f.name for f in dataclasses.fields(JobSpec) if f.init]
    assert sorted(o.field for o in fields.SPEC_FIELDS) == sorted(spec_fields)
    assert len({o.field for o in fields.FIELDS}) == len(fields.FIELDS)
    assert all(o.group in fields.GROUPS for o in fields.FIELDS)


def test_field_errors_name_the_flag_on_the_command_line(capsys):
    code, out, err = run_cli(capsys, ["render", *JOB, "--master-port", "80"])
    assert (code, out) == (2, "") and err == "leo-launch: error: --master-port must be at least 1024, got 80\n"
    code, out, err = run_cli(capsys, ["render", *JOB, "--init", "obs://bkt/w.pt"])
    assert code == 2 and err.startswith("leo-launch: error: --init 'obs://bkt/w.pt': must name a .ckpt")
    code, out, err = run_cli(capsys, ["render", "--accel", "cpu"])
    assert code == 2 and err == "leo-launch: error: --exp, --cards are required (or a job file that sets them)\n"


def test_render_output_formats(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["render", *JOB, "-o", "name"])
    assert code == 0 and err == ""
    assert out.splitlines() == ["configmap/leo-mini-1shot-cpu2-config", "service/leo-mini-1shot-cpu2",
                                "job/leo-mini-1shot-cpu2"]
    code, out, _ = run_cli(capsys, ["render", *JOB, "-o", "json"])
    yaml_code, yaml_out, _ = run_cli(capsys, ["render", *JOB])
    assert code == yaml_code == 0 and json.loads(out) == list(yaml.safe_load_all(yaml_out))
    local = ["submit", "--backend", "local", *JOB, "--data-url", str(tmp_path), "--train-url", str(tmp_path / "o")]
    code, out, err = run_cli(capsys, [*local, "--dry-run", "-o", "name"])
    assert code == 0 and out == "job/leo-mini-1shot-cpu2\n"


def test_submit_out_dir_without_dry_run_is_refused_before_anything_runs(tmp_path, capsys):
    out_dir = tmp_path / "manifests"
    code, out, err = run_cli(capsys, ["submit", "--backend", "local", *JOB, "--data-url", str(tmp_path),
                                      "--name", "leo-never", "--out-dir", str(out_dir)])
    assert (code, out) == (2, "") and len(err.splitlines()) == 1 and "--out-dir" in err and "--dry-run" in err
    assert not out_dir.exists()


def _job_yaml(capsys, argv: list[str]) -> str:
    code, out, _ = run_cli(capsys, ["render", *argv])
    assert code == 0
    return next(yaml.safe_load_all(out))["data"]["job.yaml"]


def test_the_launchers_job_yaml_is_a_job_file_for_render_and_submit(tmp_path, capsys):
    argv = ["--exp", "mini_5shot", "--accel", "ascend", "--cards", "16", "--set", "metatrain_batch_size=16",
            "--steps", "7", "--scheduler", "volcano", "--queue", "research", "--toleration", "gpu:NoSchedule",
            "--node-selector", "pool=a", "--storage-secret", "creds", "--train-url", "obs://bkt/runs",
            "--data-url", "obs://bkt/leo", "--storage-region", "cn-north-4", "--path-style",
            "--keep-checkpoints", "3", "--profile", "-n", "leo", "--image", "r.example.com/leo:ascend"]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(_job_yaml(capsys, argv))
    job = yaml.safe_load(job_file.read_text())
    assert (job["storage_region"], job["storage_path_style"], job["keep_checkpoints"]) == ("cn-north-4", True, 3)
    code, flags_out, _ = run_cli(capsys, ["render", *argv])
    for command in (["render", str(job_file)], ["render", "--file", str(job_file)],
                    ["submit", "--dry-run", "--backend", "k8s", str(job_file)]):
        code, out, err = run_cli(capsys, command)
        assert code == 0 and out == flags_out, command
    assert JobSpec.from_yaml(job_file.read_text()).to_yaml() == job_file.read_text()


def test_flags_override_the_job_files_values(tmp_path, capsys):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"experiment": "mini_1shot", "accelerator": "cpu", "cards": 2,
                                        "overrides": {"num_steps_limit": 9, "outer_lr": 0.001},
                                        "train_url": "s3://leo-out/runs", "storage_secret": "creds",
                                        "image": "registry.example.com/leo:cpu"}))
    job = yaml.safe_load(_job_yaml(capsys, [str(job_file), "--cards", "4", "--steps", "3", "--name", "other"]))
    assert (job["cards"], job["name"], job["experiment"]) == (4, "other", "mini_1shot")
    assert job["overrides"] == {"num_steps_limit": "3", "outer_lr": "0.001"}


@pytest.mark.parametrize(("content", "message"), [
    ("experiment: mini_1shot\naccelerator: cpu\ncards: 2\ncard: 3\n", "unknown job spec key 'card'"),
    ("- a list\n", "must be a mapping of job fields"),
    ("experiment: [unclosed\n", "is not valid YAML"),
    ("accelerator: cpu\n", "--exp, --cards are required"),
    ("x" * (MAX_BYTES + 1), "is larger than"),
], ids=["unknown field", "a list", "bad YAML", "missing fields", "too large"])
def test_a_bad_job_file_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    job_file = tmp_path / "job.yaml"
    job_file.write_text(content)
    code, out, err = run_cli(capsys, ["render", str(job_file)])
    assert (code, out) == (2, "") and len(err.splitlines()) == 1 and message in err, err


def test_the_job_file_is_given_once(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["render", "a.yaml", "--file", "b.yaml"])
    assert (code, out) == (2, "") and "JOB_FILE or --file" in err


@pytest.mark.parametrize(("image", "warned"), [
    (None, True), ("leo-launch:cpu", True), ("myuser/leo-launch:cpu", True),
    ("registry.example.com/leo:cpu", False), ("localhost/leo:cpu", False), ("host:5000/leo:cpu", False),
])
def test_a_kubernetes_job_without_a_registry_host_is_warned_about(capsys, image, warned):
    argv = ["render", "--exp", "mini_1shot", "--accel", "cpu", "--cards", "2", "--train-url", "s3://leo-out/runs",
            "--storage-secret", "creds"]
    code, _, err = run_cli(capsys, argv + (["--image", image] if image else []))
    assert code == 0
    assert ("names no registry host" in err) is warned
    if warned:
        assert "--image REGISTRY/leo-launch:cpu" in err and "make image-cpu IMAGE_REPO=" in err
