"""The Role `leo-launch rbac` prints is exactly sufficient (issue 27): with it, submit,
status, logs, list and cancel work for each flavour on the in-memory API with RBAC
modelled (tests/launcher/fake_cluster.py); without any one of its rights, the command that
needs it says which, and submit stops before creating anything."""

from __future__ import annotations

import io

import pytest

from launcher import flavours
from launcher.backends import k8s_logs, k8s_read
from launcher.backends import kubernetes as cluster
from launcher.errors import LaunchError
from launcher.k8s import api as kapi
from launcher.k8s import rbac
from launcher.render.render import render
from launcher.spec import contract
from launcher.spec.jobspec import build_job_spec
from tests.launcher.fake_cluster import FakeAPI, fake_cluster

NS = "team-a"
NAME = "leo-r"
COMMANDS = ("status", "logs", "list", "cancel")  # after submit, in this order


def spec(flavour):
    ascend = flavour == "ascendjob"  # MindCluster's operator runs Ascend jobs only
    return build_job_spec(experiment="mini_5shot", accelerator="ascend" if ascend else "cpu", cards=2,
                          nodes=2, name=NAME, namespace=NS, scheduler=flavour,
                          set_overrides=["total_examples_per_class=20"])


def cluster_api(flavour, rights, cluster_rights=()):
    """team-a with the operators installed, Volcano's queue, two Ascend nodes, and RBAC
    granting `rights` in team-a (and `cluster_rights` cluster-wide)."""
    api = FakeAPI(namespaces=(NS,))
    for f in flavours.FLAVOURS.values():
        if f.crd:
            api.put({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                     "metadata": {"name": f.crd}})
    api.put({"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue", "metadata": {"name": "default"},
             "status": {"state": "Open"}})
    for name in ("npu-0", "npu-1"):
        api.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                 "status": {"allocatable": {"huawei.com/Ascend910": "8"}}})
    api.grant(rbac.policy_rules(rights), NS, rbac.policy_rules(cluster_rights))
    return api


def submit(api, s, err=None):
    cluster.submit(fake_cluster(api), s, render(s), out=io.StringIO(), err=err or io.StringIO())


def start_rank0(api, s):
    """The controller's pod of node rank 0, running and logging (rank 1 not created yet)."""
    flavour = flavours.flavour_of(s.scheduler)
    pod = f"{NAME}-0-abcde"
    api.put({"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": pod, "namespace": NS,
                          "labels": {contract.LABEL_MANAGED_BY: contract.MANAGER, contract.LABEL_JOB: NAME},
                          "annotations": {contract.ANNOTATION_SCHEDULER: flavour.name, flavour.rank_keys[0]: "0"},
                          "creationTimestamp": "2026-01-01T00:00:00Z"},
             "spec": {"nodeName": "n0"},
             "status": {"phase": "Running", "containerStatuses": [
                 {"name": flavour.container or contract.CONTAINER_NAME, "state": {"running": {}}}]}})
    api.logs[pod] = ["step 1 loss 0.5"]


def run(api, command):
    """A command's result as text, and whether it succeeded."""
    c = fake_cluster(api)
    try:
        if command == "status":
            return str(cluster.status(c, NAME, NS, progress=False)), True
        if command == "logs":
            out, err = io.StringIO(), io.StringIO()
            code = k8s_logs.logs(c, NAME, NS, out=out, err=err)
            return out.getvalue() + err.getvalue(), code == 0
        if command == "list":
            return str(k8s_read.list_jobs(c, NS, progress=False)), True
        return cluster.cancel(c, NAME, NS), True
    except (LaunchError, kapi.KubeError) as err:
        return str(err), False


def names(text, right):
    """The text names the right: as the access check says it, or as the API's 403 does."""
    return str(right) in text or (f'cannot {right.verb} resource "{right.resource}"' in text
                                  and f"{right.resource}.{right.group or 'core'}" in text)


@pytest.mark.parametrize("flavour", flavours.NAMES)
def test_the_printed_role_is_enough_for_every_command(flavour):
    s = spec(flavour)
    role = rbac.needed([flavours.flavour_of(flavour)])
    api = cluster_api(flavour, role)
    err = io.StringIO()
    submit(api, s, err)
    kind = flavours.flavour_of(flavour).api
    assert (*kind, NS, NAME) in api.objects
    # pre-flight could read nothing cluster-wide: one note
    assert err.getvalue().count("\n") == 1 and "not checked, not allowed to read" in err.getvalue()
    start_rank0(api, s)
    results = {command: run(api, command) for command in COMMANDS}
    assert all(ok for _, ok in results.values()), results
    assert "'phase': 'Pending'" in results["status"][0] and "not allowed" not in results["status"][0]
    assert "step 1 loss 0.5" in results["logs"][0]
    assert f"'name': '{NAME}'" in results["list"][0]
    assert results["cancel"][0].startswith(f"job {NAME} cancelled in namespace {NS}: deleted ")
    assert api.job_objects() == [o for o in api.job_objects() if o["kind"] in ("CustomResourceDefinition", "Queue", "Node")]
    # refused were only other kinds' reads (skipped) and pre-flight's cluster-wide reads
    others = {(f.api[0].rpartition("/")[0], f.plural) for f in flavours.FLAVOURS.values() if f.name != flavour}
    optional = {(r.group, r.resource) for r in rbac.cluster_reads(flavours.FLAVOURS.values())}
    assert {(group, resource) for _, group, resource in api.denied} <= others | optional


@pytest.mark.parametrize("flavour", flavours.NAMES)
def test_with_the_optional_cluster_role_pre_flight_checks_everything(flavour):
    chosen = [flavours.flavour_of(flavour)]
    api = cluster_api(flavour, rbac.needed(chosen), rbac.cluster_reads(chosen))
    err = io.StringIO()
    submit(api, spec(flavour), err)
    assert err.getvalue() == ""
    assert not [d for d in api.denied if d[1:] in {(r.group, r.resource) for r in rbac.cluster_reads(chosen)}]


CASES = [(f.name, right) for f in flavours.FLAVOURS.values() for right in rbac.needed([f])]


@pytest.mark.parametrize(("flavour", "right"), CASES, ids=[f"{f}-{r}".replace(" ", "-") for f, r in CASES])
def test_without_any_one_right_the_command_that_needs_it_names_it(flavour, right):
    f = flavours.flavour_of(flavour)
    role = rbac.needed([f])
    less = [r for r in role if r != right]
    s = spec(flavour)
    api = cluster_api(flavour, less)
    said = []
    if right in rbac.rules(f, "submit"):
        with pytest.raises(rbac.AccessDenied) as raised:
            submit(api, s)
        assert raised.value.missing == [right]
        assert f"not allowed in namespace {NS}: {right}; nothing was created" in str(raised.value)
        assert f"leo-launch rbac -n {NS} --scheduler {flavour}" in str(raised.value)
        assert not [call for call in api.calls if call[0] != "review"]  # nothing touched
        said.append(True)
        api.grant(rbac.policy_rules(role), NS)
        submit(api, s)
        api.grant(rbac.policy_rules(less), NS)
    else:
        submit(api, s)
    start_rank0(api, s)
    for command in COMMANDS:
        text, ok = run(api, command)
        if right in rbac.rules(f, command):
            said.append(names(text, right))
            assert ok or names(text, right), (command, text)
        else:
            assert ok, (command, text)
    assert any(said), f"no command named {right}"


def test_volcano_refused_says_what_to_ask_for_and_that_plain_jobs_would_work():
    job = flavours.flavour_of("job")
    api = cluster_api("volcano", rbac.needed([job]))
    with pytest.raises(rbac.AccessDenied) as raised:
        submit(api, spec("volcano"))
    assert str(raised.value) == (
        "not allowed in namespace team-a: get jobs.batch.volcano.sh, create jobs.batch.volcano.sh, "
        "delete jobs.batch.volcano.sh (--scheduler job is allowed); nothing was created; a cluster admin "
        "can grant the Role `leo-launch rbac -n team-a --scheduler volcano` prints")


def test_cancel_says_what_it_could_not_delete_and_deletes_nothing():
    job = flavours.flavour_of("job")
    role = rbac.needed([job])
    api = cluster_api("job", role)
    submit(api, spec("job"))
    api.grant(rbac.policy_rules([r for r in role if r.verb != "delete"]), NS)
    text, ok = run(api, "cancel")
    assert not ok and text.startswith(
        "not allowed in namespace team-a: delete configmaps, delete services, delete pods, delete jobs.batch; "
        "job leo-r was not cancelled, nothing was deleted")
    assert not [call for call in api.calls if call[0] == "delete"]


def test_render_check_cluster_reports_missing_rights_as_submit_would():
    api = cluster_api("job", [r for r in rbac.needed([flavours.flavour_of("job")]) if r.resource != "services"])
    s = spec("job")
    with pytest.raises(rbac.AccessDenied, match="create services, delete services; submit would fail"):
        cluster.check_cluster(fake_cluster(api), s, render(s), err=io.StringIO())


def test_the_read_only_role_reads_but_cannot_submit_or_cancel():
    job = flavours.flavour_of("job")
    api = cluster_api("job", rbac.needed([job]))
    s = spec("job")
    submit(api, s)
    start_rank0(api, s)
    read_only = rbac.manifests([job], NS, read_only=True)[0]["rules"]
    api.grant(read_only, NS)
    assert all(run(api, command)[1] for command in ("status", "logs", "list"))
    with pytest.raises(rbac.AccessDenied):
        submit(api, build_job_spec(experiment="mini_5shot", accelerator="cpu", cards=2, name="leo-2",
                                   namespace=NS, set_overrides=["total_examples_per_class=20"]))
    assert not run(api, "cancel")[1]


def test_manifests_bind_the_role_to_the_subject():
    objs = rbac.manifests([flavours.flavour_of("volcano")], NS, who=rbac.subject(service_account="ci:runner"),
                          cluster_role=True)
    assert [o["kind"] for o in objs] == ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
    assert objs[1]["subjects"] == [{"kind": "ServiceAccount", "name": "runner", "namespace": "ci"}]
    assert objs[1]["roleRef"]["name"] == objs[0]["metadata"]["name"] == "leo-launch"
    assert {"apiGroups": ["scheduling.volcano.sh"], "resources": ["queues"], "verbs": ["get"]} in objs[2]["rules"]


def test_the_readme_shows_each_flavours_role_as_leo_launch_rbac_prints_it():
    """launcher/README.md's Permissions section: each `<!-- leo-launch rbac ARGS -->` line is
    followed by a yaml block equal to that command's output; every flavour has one."""
    import contextlib
    import re
    from pathlib import Path

    from launcher.cli.main import main

    readme = (Path(__file__).resolve().parents[3] / "launcher" / "README.md").read_text()
    shown = re.findall(r"^<!-- (leo-launch rbac [^>]*?) -->\n```yaml\n(.*?)```$", readme, re.S | re.M)
    assert sorted(re.search(r"--scheduler (\S+)", cmd).group(1) for cmd, _ in shown) == sorted(flavours.NAMES)
    for command, block in shown:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(command.split()[1:]) == 0
        assert block == out.getvalue(), f"launcher/README.md: update the block of `{command}` to:\n{out.getvalue()}"


@pytest.mark.parametrize(("argv", "message"), [
    (["-n", "Team_A"], "leo-launch: error: --namespace 'Team_A' "),
    (["--scheduler", "slurm"], "invalid choice: 'slurm'"),
    (["--user", "alice", "--group", "devs"], "not allowed with argument"),
])
def test_bad_rbac_arguments_are_one_line_and_exit_2(argv, message, capsys):
    from launcher.cli.main import main

    try:
        code = main(["rbac", *argv])
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr()
    assert err.out == "" and message in err.err and len(err.err.strip().splitlines()) == 1
