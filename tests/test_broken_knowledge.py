"""Broken knowledge is refused with a message naming the file and the entry.

One case per error in ``cds_service/decision/knowledge.py``, kept in ``tests/bad_knowledge/<case>.json``
as a small change to a copy of the bundled ``cds_service/decision/data`` (not a whole copy per case)::

    {"description": "...",
     "expected": "<exact KnowledgeError message>",   # "{data}" stands for the copied directory
     "write":  {"<relative path>": <JSON written as the file>},
     "raw":    {"<relative path>": "<text written as the file>"},
     "delete": ["<relative path of a file or folder>"],        # "." deletes the whole directory
     "replace": [{"old": "<text>", "new": "<text>"}],           # a rename throughout: in every file
     "patch":  [{"file": "<relative path>", "pointer": "/json/pointer", "value": ...},
                {"file": "<relative path>", "pointer": "/json/pointer", "remove": true}]}

Patches set or replace the value at a JSON pointer (RFC 6901; a final ``-`` appends to a
list) or remove it. A replacement changes the text of every ``*.json`` file it occurs in (at
least one). Every case is asserted by its exact message (style.md, AHRQ CDS Connect).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cds_service.decision.contract import CARD_KINDS, FACT_USES, Fact
from cds_service.decision.knowledge import DEFAULT_DIR, KnowledgeError, load_knowledge

CASES_DIR = Path(__file__).parent / "bad_knowledge"
CASES = sorted(CASES_DIR.glob("*.json"))
CASE_KEYS = {"description", "expected", "write", "raw", "delete", "patch", "replace"}


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _apply_pointer(doc, pointer: str, op: dict):
    """Set, replace or remove the value at ``pointer`` in ``doc``; return the new document."""
    assert pointer.startswith("/"), f"pointer must start with '/': {pointer!r}"
    tokens = [_unescape(t) for t in pointer[1:].split("/")]
    parent = doc
    for t in tokens[:-1]:
        parent = parent[int(t)] if isinstance(parent, list) else parent[t]
    last = tokens[-1]
    if op.get("remove"):
        assert "value" not in op, f"{pointer}: 'remove' and 'value' together"
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]  # KeyError if the case removes something that is not there
        return doc
    assert "value" in op, f"{pointer}: patch needs 'value' or 'remove': true"
    if isinstance(parent, list):
        if last == "-":
            parent.append(op["value"])
        else:
            parent[int(last)] = op["value"]  # IndexError if out of range
    else:
        parent[last] = op["value"]
    return doc


def apply_case(case: dict, data: Path) -> None:
    """Change the copied knowledge directory ``data`` as the case describes."""
    unknown = set(case) - CASE_KEYS
    assert not unknown, f"unknown keys in case: {sorted(unknown)}"
    for rel, content in case.get("write", {}).items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    for rel, text in case.get("raw", {}).items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text(text, encoding="utf-8")
    for op in case.get("patch", []):
        assert set(op) <= {"file", "pointer", "value", "remove"}, f"unknown keys in patch: {op}"
        path = data / op["file"]
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc = _apply_pointer(doc, op["pointer"], op)
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    for op in case.get("replace", []):
        assert set(op) == {"old", "new"}, f"replace needs exactly 'old' and 'new': {op}"
        changed = 0
        for path in sorted(data.rglob("*.json")):
            text = path.read_text(encoding="utf-8")
            if op["old"] in text:
                path.write_text(text.replace(op["old"], op["new"]), encoding="utf-8")
                changed += 1
        assert changed, f"case replaces {op['old']!r}, which is in no file of the bundled knowledge"
    for rel in case.get("delete", []):
        target = data / rel
        assert target.exists(), f"case deletes {rel}, which is not in the bundled knowledge"
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


@pytest.fixture()
def data_copy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(DEFAULT_DIR, data)
    return data


def test_there_are_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case_path", CASES, ids=[p.stem for p in CASES])
def test_broken_knowledge_is_refused_with_its_message(case_path: Path, data_copy: Path):
    case = json.loads(case_path.read_text(encoding="utf-8"))
    assert case.get("description"), "every case says what is broken"
    assert case.get("expected"), "every case asserts an exact message"
    assert any(k in case for k in ("write", "raw", "delete", "patch", "replace")), "case changes nothing"
    apply_case(case, data_copy)

    with pytest.raises(KnowledgeError) as info:
        load_knowledge(data_copy)

    assert str(info.value) == case["expected"].replace("{data}", str(data_copy))
    err = info.value
    assert str(err) == f"{err.file}: {err.entry}: {err.problem}"


def test_bundled_knowledge_loads():
    k = load_knowledge()
    assert k.directory == DEFAULT_DIR
    assert k.variants and k.procedures and k.facts and k.services
    assert len(k.version) == 12


def test_copied_directory_loads_unchanged(data_copy: Path):
    bundled = load_knowledge()
    copied = load_knowledge(data_copy)
    assert copied.directory == data_copy
    assert copied.version == bundled.version
    assert set(copied.variants) == set(bundled.variants)
    assert set(copied.procedures) == set(bundled.procedures)
    assert set(copied.facts) == set(bundled.facts)


def test_a_patch_changes_the_version(data_copy: Path):
    """The version hash covers every file's bytes, so audit records tell edited knowledge apart."""
    bundled = load_knowledge()
    case = {"description": "reword a card", "expected": "-",
            "patch": [{"file": "cards.json", "pointer": "/kinds/conflict/summary", "value": "Reworded."}]}
    apply_case(case, data_copy)
    assert load_knowledge(data_copy).version != bundled.version


def _rename_fact(doc, old: str, new: str):
    """``doc`` with every string ``old`` replaced by ``new``, except value set references
    (a value set may share a fact's name; it is another thing)."""
    if isinstance(doc, dict):
        return {k: v if k == "valueSet" else _rename_fact(v, old, new) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_rename_fact(v, old, new) for v in doc]
    return new if doc == old else doc


@pytest.mark.parametrize("fact", list(Fact), ids=[f.value for f in Fact])
def test_renaming_a_fact_the_code_reads_refuses_to_load(fact: Fact, data_copy: Path):
    """Each fact the rules read by name, renamed wherever the knowledge names it, stops
    start-up naming the file and the fact, instead of a card silently disappearing."""
    for path in [*data_copy.glob("*.json"), *data_copy.glob("acr/*.json")]:
        doc = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(_rename_fact(doc, fact.value, f"{fact}-renamed")), encoding="utf-8")
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(data_copy)
    assert (info.value.file, info.value.entry) == ("facts.json", f"fact '{fact}'")
    assert info.value.problem == f"not defined, but the service reads it: {FACT_USES[fact]}"


@pytest.mark.parametrize("kind", CARD_KINDS)
def test_every_card_the_service_issues_needs_its_wording(kind: str, data_copy: Path):
    """Each card kind and advisory the code issues, missing from cards.json, stops start-up."""
    apply_case({"description": f"remove {kind}", "expected": "-",
                "patch": [{"file": "cards.json", "pointer": f"/kinds/{kind}", "remove": True}]}, data_copy)
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(data_copy)
    assert str(info.value) == f"cards.json: kinds.{kind}: missing: the service issues this card"
