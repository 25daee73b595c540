"""Writes launcher/schemas/jobset/jobset-v1alpha2.schema.json: the JSON Schema of the
jobset.x-k8s.io/v1alpha2 JobSet, generated from the published API models of the PyPI
package kubeflow-trainer-api (Apache-2.0; a test dependency of this project), made strict
(unknown fields refused, as the API server's strict field validation does) and without the
descriptions. tests/launcher/flavours/test_jobset.py checks the committed file is what
this program writes from the pinned package.

    .venv/bin/python tests/tools/gen_jobset_schema.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "launcher" / "schemas" / "jobset" / "jobset-v1alpha2.schema.json"


def _strict(node):
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()
           if key not in ("description", "title", "properties", "default")}
    options = [o for o in out.get("anyOf", ()) if o != {"type": "null"}]
    if "anyOf" in out and len(options) == 1:  # Optional[X]: X when present (clearer errors)
        del out["anyOf"]
        out.update(options[0])
    if "properties" in node:
        out["properties"] = {name: _strict(sub) for name, sub in node["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def jobset_schema() -> dict:
    from kubeflow_trainer_api.models.jobset_v1alpha2_job_set import JobsetV1alpha2JobSet

    schema = JobsetV1alpha2JobSet.model_json_schema(by_alias=True, mode="validation")
    for name, definition in schema["$defs"].items():
        # The generator's one-of wrappers (Quantity, IntOrString) stand for their values
        instance = definition.get("properties", {}).get("actual_instance")
        if instance:
            schema["$defs"][name] = {"anyOf": [t for t in instance["anyOf"] if t != {"type": "null"}]}
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_strict(schema)}


def text() -> str:
    return json.dumps(jobset_schema(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(text())
    sys.stdout.write(f"wrote {OUT} ({OUT.stat().st_size} bytes)\n")
