"""Property-based tests (Hypothesis) of every parser of user input in the JobSpec (issue 12):
storage URLs and endpoints, job names and labels, `--set` values, tolerations, node
selectors, inventories and annotations.

Properties: a parser answers with a value or a one-line UsageError (exit code 2), never
another exception, in bounded time; and what render accepts the bootstrap accepts (the
job.yaml read back, the experiment config, the storage URLs and endpoint as the pod parses
them). Examples are few and bounded (see SETTINGS) so `make test` stays quick."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from launcher.errors import UsageError
from launcher.spec import names as syn
from launcher.spec.jobspec import JobSpec, build_job_spec
from launcher.spec.ranktable import RankTableError, fragment_from_annotation, load_inventory
from launcher.spec.values import (
    Toleration,
    endpoint_problem,
    parse_node_selectors,
    storage_url_problem,
)
from launcher.storage.base import StorageOptions, StorageURL, parse_url
from leo_core.config import ConfigError
from tests.launcher.properties import SETTINGS, hostile_text, one_line

segment = st.text(alphabet="ab1-_.", min_size=0, max_size=6) | hostile_text
urls = (st.builds(lambda scheme, bucket, parts: f"{scheme}://{bucket}/{'/'.join(parts)}",
                  st.sampled_from(["s3", "obs", "file", "S3", "http", ""]),
                  st.sampled_from(["bkt", "my-bucket", "a", "UPPER", "b..c", "x" * 64, ""]),
                  st.lists(segment, max_size=4))
        | st.builds(lambda parts: "/".join(parts), st.lists(segment, max_size=4))
        | hostile_text)
endpoints = (st.builds(lambda scheme, auth, host, port, tail: f"{scheme}://{auth}{host}{port}{tail}",
                       st.sampled_from(["http", "https", "ftp", "HTTP"]),
                       st.sampled_from(["", "u:p@", "u@", "@"]),
                       st.sampled_from(["obs.example.com", "127.0.0.1", "[::1]", "", "h_st", "[::1"]),
                       st.sampled_from(["", ":9000", ":0", ":99999", ":x", ":"]),
                       st.sampled_from(["", "/", "/p", "?q", "#f", " "]) | hostile_text)
             | hostile_text)


def job(**values):
    values.setdefault("experiment", "mini_5shot")
    values.setdefault("accelerator", "cpu")
    values.setdefault("cards", 1)
    values.setdefault("name", "leo-prop")
    return build_job_spec(**values)


def bootstrap_accepts(spec: JobSpec) -> None:
    """What the pod does with a rendered job (launcher.pod.node / bootstrap)."""
    again = JobSpec.from_yaml(spec.to_yaml())
    assert again == spec
    again.experiment_config()
    StorageOptions(endpoint=again.storage_endpoint, progress=False)
    if again.data_url is not None:
        parse_url(again.data_url)
    if again.train_url is not None:
        parse_url(again.train_url).child(again.name)


# ------------------------------------------------------------------ storage URLs, endpoints


@SETTINGS
@given(urls)
def test_parse_url_answers_a_url_or_a_usage_error(text):
    try:
        parsed = parse_url(text)
    except UsageError as err:
        one_line(err)
        return
    assert isinstance(parsed, StorageURL)
    assert parse_url(str(parsed)) == parsed  # printing and parsing again is stable


@SETTINGS
@given(urls)
def test_what_submit_accepts_as_a_url_the_pod_accepts(text):
    if storage_url_problem(text) is None:
        parse_url(text)
    for flag in ("data_url", "train_url"):
        try:
            spec = job(**{flag: text})
        except UsageError as err:
            one_line(err)
            continue
        bootstrap_accepts(spec)


@SETTINGS
@given(endpoints)
def test_what_submit_accepts_as_an_endpoint_the_pod_accepts(text):
    try:
        spec = job(storage_endpoint=text)
    except UsageError as err:
        one_line(err)
        assert "p@" not in str(err) or "u:p@" not in text  # never echoes credentials
        return
    assert endpoint_problem(text) is None and "@" not in text
    bootstrap_accepts(spec)


# ------------------------------------------------------------------ names and labels


@SETTINGS
@given(hostile_text | st.from_regex(r"[a-z][a-z0-9-]{0,70}", fullmatch=True))
def test_job_names(text):
    try:
        name = syn.check_job_name(text)
    except UsageError as err:
        one_line(err)
        return
    try:
        spec = job(name=name)
    except UsageError as err:  # a longer name than pod host names allow
        one_line(err)
        return
    bootstrap_accepts(spec)


@SETTINGS
@given(hostile_text | st.from_regex(r"([a-z0-9.-]{1,20}/)?[A-Za-z0-9._-]{1,70}", fullmatch=True),
       hostile_text | st.from_regex(r"[A-Za-z0-9._-]{0,70}", fullmatch=True))
def test_label_keys_and_values_answer_a_reason_or_none(key, value):
    for problem in (syn.label_key_problem(key), syn.label_value_problem(value)):
        assert problem is None or (isinstance(problem, str) and "\n" not in problem)


# ------------------------------------------------------------------ --set, tolerations, selectors


set_items = (st.builds(lambda k, v: f"{k}={v}",
                       st.sampled_from(["num_steps_limit", "metatrain_batch_size", "inner_lr",
                                        "checkpoint_steps", "dropout_rate", "nope", "",
                                        "total_examples_per_class"]),
                       st.sampled_from(["1", "0", "-1", "1e400", "nan", "inf", "2.5", "true",
                                        "99999999999999999999999", "", " ", "x"]) | hostile_text)
             | hostile_text)


@SETTINGS
@given(st.lists(set_items, max_size=3))
def test_set_values(items):
    try:
        spec = job(set_overrides=items)
    except (UsageError, ConfigError) as err:
        one_line(err)
        return
    bootstrap_accepts(spec)


tolerations = (st.builds(lambda k, v, e: f"{k}{v}{e}",
                         st.sampled_from(["key", "example.com/key", "", "k" * 70, "a/b/c"]),
                         st.sampled_from(["", "=value", "=", "=v:x", "=" + "v" * 70]),
                         st.sampled_from(["", ":NoSchedule", ":NoExecute", ":Bad", ":"]))
               | hostile_text)


@SETTINGS
@given(st.lists(tolerations, max_size=3), st.lists(hostile_text | st.sampled_from(
    ["zone=a", "a=", "=b", "example.com/gpu=true", "k=v=w"]), max_size=3))
def test_tolerations_and_node_selectors(tols, selectors):
    try:
        parsed = [Toleration.parse(t) for t in tols]
        parse_node_selectors(selectors)
    except UsageError as err:
        one_line(err)
        return
    for tol in parsed:
        assert Toleration.from_dict(tol.to_dict()) == tol
    try:
        spec = job(tolerations=tols, node_selectors=selectors)
    except UsageError as err:  # e.g. two tolerations of one key
        one_line(err)
        return
    bootstrap_accepts(spec)


# ------------------------------------------------------------------ inventories, annotations


ip = st.sampled_from(["10.0.0.1", "10.0.0.2", "fe80::1", "fe80:0::1", "999.1.1.1", "", "x"])
node = st.fixed_dictionaries({"name": st.sampled_from(["n1", "n2", "N!", ""]) | hostile_text,
                              "host_ip": ip | st.integers(),
                              "device_ips": st.lists(ip, max_size=9) | ip})
inventory_docs = (st.builds(lambda nodes: {"nodes": nodes}, st.lists(node, max_size=4))
                  | st.dictionaries(hostile_text, hostile_text, max_size=3))


@SETTINGS
@given(inventory_docs, st.binary(max_size=40))
def test_inventories(tmp_path_factory, doc, junk):
    import yaml

    path = tmp_path_factory.mktemp("inv") / "inventory.yaml"
    for data in (yaml.safe_dump(doc).encode(), junk, yaml.safe_dump(doc).encode() + junk):
        path.write_bytes(data)
        try:
            nodes = load_inventory(path)
        except RankTableError as err:
            one_line(err)
            continue
        assert nodes


@SETTINGS
@given(st.recursive(st.none() | st.booleans() | st.integers() | hostile_text,
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["server_id", "devices", "device_id",
                                                       "device_ip", "x"]), children, max_size=4),
                    max_leaves=12))
def test_annotations(value):
    import json

    for text in (json.dumps(value), json.dumps(value)[:-1], value):
        try:
            fragment_from_annotation(text if isinstance(text, str | dict) else json.dumps(text))
        except RankTableError as err:
            one_line(err)
