"""Notebook versions: the canonical form that is hashed, reviewed and executed, and the
parameter schema defined by its papermill ``parameters`` cell.

The canonical form keeps what decides what a notebook does (cell types, sources, tags,
the kernel's language) and drops what does not (outputs, execution counts, other
metadata).  Its SHA-256 is the version's identity: a changed notebook is a new version.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any

from jipkit.errors import NotebookError, ParameterError
from jipkit.protocol.canonical import canonical_json, sha256_hex

__all__ = [
    "canonical_notebook",
    "check_parameters",
    "parameter_schema",
    "to_nbformat",
    "version_hash",
]

JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")


def _source(cell: Mapping[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def canonical_notebook(nb: Mapping[str, Any] | str | bytes) -> dict[str, Any]:
    """The canonical form of a notebook (a dict, or its JSON text).

    Raises
    ------
    NotebookError
        Not JSON, not nbformat 4, or cells of an unknown type.
    """
    if isinstance(nb, str | bytes):
        try:
            nb = json.loads(nb)
        except ValueError as err:
            raise NotebookError(
                f"Expected a notebook (.ipynb JSON), found text that is not JSON: {err}."
            ) from err
    if not isinstance(nb, Mapping) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise NotebookError("Expected a Jupyter notebook in nbformat 4 with a list of cells.")
    cells = []
    for i, cell in enumerate(nb["cells"]):
        kind = cell.get("cell_type")
        if kind not in ("code", "markdown", "raw"):
            raise NotebookError(f"Cell {i}: expected cell_type code, markdown or raw, found {kind!r}.")
        tags = sorted({str(t) for t in (cell.get("metadata", {}) or {}).get("tags", [])})
        if "injected-parameters" in tags:
            raise NotebookError(
                f"Cell {i} is tagged 'injected-parameters': papermill would replace it with the run's "
                "parameters, so what was reviewed would not run. Remove the cell (or the tag)."
            )
        cells.append({"cell_type": kind, "source": _source(cell), "tags": tags})
    meta = nb.get("metadata", {}) or {}
    language = (meta.get("kernelspec", {}) or {}).get("language") or (
        meta.get("language_info", {}) or {}
    ).get("name", "python")
    return {"format": "jip-notebook/1", "language": str(language), "cells": cells}


def version_hash(nb: Mapping[str, Any] | str | bytes) -> str:
    """SHA-256 (hex) of the canonical form: the identity of a notebook version."""
    canon = nb if isinstance(nb, Mapping) and nb.get("format") == "jip-notebook/1" else canonical_notebook(nb)
    return sha256_hex(canonical_json(canon))


def to_nbformat(canon: Mapping[str, Any]) -> dict[str, Any]:
    """An executable nbformat 4 notebook made from exactly the canonical form."""
    cells = []
    for i, c in enumerate(canon["cells"]):
        cell: dict[str, Any] = {
            "cell_type": c["cell_type"],
            "id": f"cell-{i}",
            "metadata": {"tags": list(c["tags"])} if c["tags"] else {},
            "source": c["source"],
        }
        if c["cell_type"] == "code":
            cell.update(outputs=[], execution_count=None)
        cells.append(cell)
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "jip", "display_name": "JIP", "language": canon["language"]},
            "language_info": {"name": canon["language"]},
        },
        "cells": cells,
    }


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise ValueError(type(value).__name__)


def parameter_schema(nb: Mapping[str, Any] | str | bytes) -> dict[str, dict[str, Any]]:
    """Names, JSON types and defaults of the parameters in the ``parameters`` cell.

    Each top-level assignment of a literal (``threshold = -500``) is a parameter.

    Returns
    -------
    dict
        ``{name: {"type": json_type, "default": value}}``; empty when the notebook has
        no cell tagged ``parameters``.

    Raises
    ------
    NotebookError
        The parameters cell is not Python, or assigns something that is not a literal.
    """
    canon = nb if isinstance(nb, Mapping) and nb.get("format") == "jip-notebook/1" else canonical_notebook(nb)
    cells = [c for c in canon["cells"] if c["cell_type"] == "code" and "parameters" in c["tags"]]
    if not cells:
        return {}
    if len(cells) > 1:
        raise NotebookError("Expected one cell tagged 'parameters', found several. Merge them.")
    try:
        tree = ast.parse(cells[0]["source"])
    except SyntaxError as err:
        raise NotebookError(f"The parameters cell is not valid Python: {err}.") from err
    schema: dict[str, dict[str, Any]] = {}
    for node in tree.body:
        targets: list[ast.expr]
        if isinstance(node, ast.Assign):
            targets, value_node = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value_node = [node.target], node.value
        else:
            continue
        for t in targets:
            if not isinstance(t, ast.Name):
                raise NotebookError("The parameters cell may only assign plain names (name = literal).")
            try:
                value = ast.literal_eval(value_node)
                kind = _json_type(value)
            except ValueError as err:
                raise NotebookError(
                    f"Parameter {t.id!r}: expected a literal value (number, string, bool, list, dict, None), "
                    f"found {ast.unparse(value_node)!r}."
                ) from err
            schema[t.id] = {"type": kind, "default": list(value) if isinstance(value, tuple) else value}
    return schema


def check_parameters(schema: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> None:
    """Refuse parameters that the schema does not name or whose JSON type differs.

    An integer is accepted where a number is expected; ``None`` only where the default
    is ``None``.  (papermill itself only warns about unknown names.)

    Raises
    ------
    ParameterError
    """
    problems = []
    for name, value in params.items():
        if name not in schema:
            known = ", ".join(sorted(schema)) or "none"
            problems.append(f"{name!r} is not a parameter of this notebook (its parameters: {known})")
            continue
        want = schema[name]["type"]
        try:
            got = _json_type(value)
        except ValueError:
            got = type(value).__name__
        if got != want and not (want == "number" and got == "integer"):
            problems.append(f"{name!r} must be of JSON type {want}, found {got} ({value!r})")
    if problems:
        raise ParameterError("Run parameters refused: " + "; ".join(problems) + ".")
