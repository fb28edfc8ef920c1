"""saeflow.provenance: fingerprints of config slices (the params that carry config changes)."""

import datetime
from pathlib import Path

import pytest

from saeflow.provenance import canonical_json, fingerprint

RECIPE = {"arch": "topk", "expansion": 4, "k": 16, "epochs": 10, "lr": 3e-4}
SLICES = {
    "model": {"source": "toy", "toy": {"hidden_size": 64, "steps": 1500}, "layers": [2, 4]},
    "dataset": {"kind": "peaks", "window": 64, "reference": "toy"},
    "sae": RECIPE,
}


def test_stable_across_key_order():
    reordered = {
        "sae": dict(reversed(list(RECIPE.items()))),
        "dataset": {"reference": "toy", "window": 64, "kind": "peaks"},
        "model": {"layers": [2, 4], "toy": {"steps": 1500, "hidden_size": 64}, "source": "toy"},
    }
    assert list(reordered) != list(SLICES)
    assert fingerprint(reordered) == fingerprint(SLICES)
    assert canonical_json(reordered) == canonical_json(SLICES)


def test_known_value():
    # pins the canonical form: a change to it would rerun every workflow output
    assert canonical_json({"b": [1, 2.5, "x"], "a": None}) == '{"a":null,"b":[1,2.5,"x"]}'
    # sha1 of that text (printf ... | sha1sum), first 16 hex digits
    assert fingerprint({"b": [1, 2.5, "x"], "a": None}) == "4f40e177cd37297b"


@pytest.mark.parametrize(
    "path, value",
    [
        (("sae", "k"), 32),
        (("sae", "lr"), 1e-3),
        (("model", "toy", "steps"), 300),
        (("model", "layers"), [2]),
        (("dataset", "window"), 128),
    ],
)
def test_changes_when_a_relevant_value_changes(path, value):
    changed = {k: dict(v) for k, v in SLICES.items()}
    changed["model"]["toy"] = dict(SLICES["model"]["toy"])
    node = changed
    for key in path[:-1]:
        node = node[key]
    assert node[path[-1]] != value
    node[path[-1]] = value
    assert fingerprint(changed) != fingerprint(SLICES)


def test_unchanged_when_an_unrelated_key_changes():
    config = {"saes": {"a": dict(RECIPE), "b": {"arch": "jumprelu"}}, "threads": 4}
    before = fingerprint(config["saes"]["a"])
    config["saes"]["b"]["expansion"] = 8
    config["threads"] = 16
    assert fingerprint(config["saes"]["a"]) == before
    assert fingerprint(config["saes"]["a"]) != fingerprint(config["saes"]["b"])


def test_list_order_and_types_count():
    assert fingerprint([1, 2]) != fingerprint([2, 1])  # lists are ordered (layers, pools)
    assert fingerprint({"k": 1}) != fingerprint({"k": "1"})
    assert fingerprint({"k": None}) != fingerprint({})
    assert fingerprint((1, 2)) == fingerprint([1, 2])


def test_odd_values():
    assert fingerprint({"s": {3, 1, 2}}) == fingerprint({"s": [1, 2, 3]})
    assert fingerprint({"d": datetime.date(2024, 1, 2)}) == fingerprint({"d": "2024-01-02"})
    assert fingerprint({"p": Path("a/b")}) == fingerprint({"p": "a/b"})
    with pytest.raises(TypeError, match="cannot fingerprint"):
        fingerprint({"o": object()})


def test_length():
    assert len(fingerprint(SLICES)) == 16
    assert fingerprint(SLICES, 40).startswith(fingerprint(SLICES))
    with pytest.raises(ValueError):
        fingerprint(SLICES, 0)
