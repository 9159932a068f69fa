"""The shared protocol: canonical notebooks, parameter schemas, signatures, records."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import nbformat
import pytest

from jipkit.errors import ConfigError, NotebookError, ParameterError, SignatureError
from jipkit.metrics import record
from jipkit.protocol.messages import builtin_exception_name
from jipkit.protocol.notebook import (
    canonical_notebook,
    check_parameters,
    parameter_schema,
    to_nbformat,
    version_hash,
)
from jipkit.protocol.records import validate_record
from jipkit.protocol.signing import SigningKey, fingerprint, sign_document, verify_document


def notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Cohort"),
        nbformat.v4.new_code_cell(
            "min_year = 2018\nthreshold: float = -500.0\nmodalities = ['CT', 'MR']\nlabel = 'x'\nflag = True\nopt = None",
            metadata={"tags": ["parameters"]},
        ),
        nbformat.v4.new_code_cell("print(min_year)"),
    ]
    return nb


def test_hash_ignores_outputs_and_counts_but_not_sources() -> None:
    nb = notebook()
    h = version_hash(nb)
    run = copy.deepcopy(nb)
    run.cells[2].outputs = [nbformat.v4.new_output("stream", text="2018\n")]
    run.cells[2].execution_count = 7
    run.metadata["widgets"] = {"state": 1}
    assert version_hash(run) == h
    changed = copy.deepcopy(nb)
    changed.cells[2].source = "print(min_year) "  # one byte
    assert version_hash(changed) != h
    retagged = copy.deepcopy(nb)
    retagged.cells[2].metadata["tags"] = ["x"]
    assert version_hash(retagged) != h


def test_executed_form_round_trips_to_the_same_hash() -> None:
    canon = canonical_notebook(notebook())
    nb = to_nbformat(canon)
    nbformat.validate(nbformat.from_dict(nb))
    assert version_hash(nb) == version_hash(canon)


def test_parameter_schema_and_checks() -> None:
    schema = parameter_schema(notebook())
    assert {k: v["type"] for k, v in schema.items()} == {
        "min_year": "integer",
        "threshold": "number",
        "modalities": "array",
        "label": "string",
        "flag": "boolean",
        "opt": "null",
    }
    check_parameters(
        schema, {"min_year": 2020, "threshold": -400, "modalities": ["CT"]}
    )  # int for number: fine
    with pytest.raises(ParameterError, match="'mni_year' is not a parameter"):
        check_parameters(schema, {"mni_year": 2020})
    with pytest.raises(ParameterError, match="'min_year' must be of JSON type integer, found string"):
        check_parameters(schema, {"min_year": "2020"})
    with pytest.raises(ParameterError, match="boolean"):
        check_parameters(schema, {"flag": 1})


@pytest.mark.parametrize(
    ("source", "fragment"),
    [("x = foo()", "literal"), ("x = (", "not valid Python"), ("a.b = 1", "plain names")],
)
def test_bad_parameters_cells(source: str, fragment: str) -> None:
    nb = notebook()
    nb.cells[1].source = source
    with pytest.raises(NotebookError, match=fragment):
        parameter_schema(nb)


def test_not_a_notebook() -> None:
    with pytest.raises(NotebookError, match="not JSON"):
        canonical_notebook("{nope")
    with pytest.raises(NotebookError, match="nbformat 4"):
        canonical_notebook({"cells": []})


def test_signatures(tmp_path: Path) -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    trusted = {key.key_id: key.public_b64}
    doc = sign_document({"job_id": "j1", "parameters": {"a": 1}, "text": "Müller"}, key)
    assert verify_document(doc, trusted) == key.key_id
    tampered = {**doc, "parameters": {"a": 2}}
    with pytest.raises(SignatureError, match="changed after signing"):
        verify_document(tampered, trusted)
    with pytest.raises(SignatureError, match="not signed"):
        verify_document({"job_id": "j1"}, trusted)
    with pytest.raises(SignatureError, match="not among the trusted"):
        verify_document(sign_document({"job_id": "j1"}, other), trusted)
    assert fingerprint(key.public_b64).startswith("SHA256:") and len(key.key_id) == 16
    path = key.save(tmp_path / "k.pem")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert SigningKey.load(path).public_b64 == key.public_b64
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SigningKey.load(path)


def test_records_follow_the_schema() -> None:
    import pandas as pd

    assert record("n_ct", 12, kind="count", of="series")["value"] == 12
    tab = record(
        "by_year",
        pd.DataFrame({"year": [2020, 2021], "n": [3, 4]}),
        kind="table",
        of="series",
        count_columns=["n"],
    )
    assert tab["value"] == {"columns": ["year", "n"], "rows": [[2020, 3], [2021, 4]]}
    m = record("lung_ml", 4711.5, unit="ml", n=10, sd=300.0)
    assert m["kind"] == "measure" and m["sd"] == 300.0
    with pytest.raises(ValueError, match="of="):
        record("n", 3, kind="count")
    with pytest.raises(NotebookError, match="name"):
        record("bad name!", 1.0)
    with pytest.raises(NotebookError, match="value"):
        validate_record({"schema": "jip.record/1", "name": "n", "kind": "count", "of": "series", "value": -1})
    suppressed = {
        "schema": "jip.record/1",
        "name": "n",
        "kind": "count",
        "of": "series",
        "value": None,
        "suppressed": True,
    }
    validate_record(suppressed)


def test_only_builtin_exception_names_leave() -> None:
    assert builtin_exception_name("ValueError") == "ValueError"
    assert builtin_exception_name("KeyboardInterrupt") == "KeyboardInterrupt"
    assert builtin_exception_name("MüllerJürgen") is None
    assert builtin_exception_name(None) is None
