"""Geneformer tokenisation against Geneformer's own ``tokenizer.py``.

``reference_tokenize`` transcribes, step for step, what ``TranscriptomeTokenizer`` does to an
AnnData (``__init__``'s mapping filter, ``sum_ensembl_ids`` for h5ad, ``tokenize_anndata``,
``create_dataset``'s truncation), with numpy and pandas in place of AnnData (the Geneformer
package is not on the package registries). saeflow's tokenizer must give the same token ids on
random matrices that exercise every branch: aliases mapped through ``ensembl_mapping_dict``, ids in
two columns, versioned ids, ids absent from the dictionaries, lower-case ids.
"""

import logging
import pickle
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tinymodels import gene, make_geneformer_dir

from saeflow.models import load_model
from saeflow.models.base import CellMatrix
from saeflow.models.geneformer import GeneformerTokenizer
from saeflow.utils import SaeflowError

SPECIALS = ["<pad>", "<mask>", "<cls>", "<eos>"]


def reference_tokenize(X, ids, token_dict, medians, mapping, model_input_size, special_token):
    """Geneformer's TranscriptomeTokenizer on a cells x genes count matrix ``X`` whose
    ``var.ensembl_id`` is ``ids``; ``obs.n_counts`` is the total of each cell. Returns the
    ``input_ids`` of each cell."""
    X = np.asarray(X, dtype=np.float64)
    # __init__: gene_mapping_file=None -> identity; keep the entries that map to a token
    if mapping is None:
        mapping = {k: k for k, _ in token_dict.items()}
    mapping = {k: v for k, v in mapping.items() if v in set(token_dict.keys())}
    genelist_dict = dict(zip(token_dict.keys(), [True] * len(token_dict)))
    n_counts = X.sum(axis=1)
    # sum_ensembl_ids (h5ad, collapse_gene_ids=True)
    ensembl_ids = pd.Series(ids)
    genes_in_map_dict = [g for g in ensembl_ids if g in mapping.keys()]
    vals_from_map_dict = [mapping.get(g) for g in genes_in_map_dict]
    collapsed = ensembl_ids.str.upper().map(mapping)
    if len(set(genes_in_map_dict)) == len(set(vals_from_map_dict)):
        var_ids, data = collapsed, X
    else:
        keep = ~collapsed.isna().to_numpy()
        names, data = collapsed[keep].tolist(), X[:, keep]
        dup_genes = [g for g, c in Counter(names).items() if c > 1]
        unique = [j for j, g in enumerate(names) if g not in dup_genes]
        summed = [
            data[:, [j for j, g in enumerate(names) if g == d]].sum(axis=1) for d in dup_genes
        ]
        data = np.column_stack([data[:, unique]] + summed) if summed else data[:, unique]
        var_ids = pd.Series([names[j] for j in unique] + dup_genes)
    # tokenize_anndata
    loc = np.where([genelist_dict.get(i, False) for i in var_ids])[0]
    norm_factor_vector = np.array([medians[i] for i in var_ids.iloc[loc]])
    tokens = np.array([token_dict[i] for i in var_ids.iloc[loc]])
    X_norm = sp.csr_matrix(data[:, loc] / n_counts[:, None] * 10_000 / norm_factor_vector)
    cells = [tokens[X_norm[i].indices][np.argsort(-X_norm[i].data)] for i in range(len(X))]
    # create_dataset: truncate, <cls> ... <eos> for the 95M/V2 series
    if special_token:
        return [
            [token_dict["<cls>"]] + c[: model_input_size - 2].tolist() + [token_dict["<eos>"]]
            for c in cells
        ]
    return [c[:model_input_size].tolist() for c in cells]


def dictionaries(n_genes=40, seed=0):
    rng = np.random.default_rng(seed)
    token_dict = {t: i for i, t in enumerate(SPECIALS)}
    token_dict.update({gene(i): len(SPECIALS) + i for i in range(n_genes)})
    medians = {gene(i): float(rng.uniform(0.5, 5.0)) for i in range(n_genes)}
    # ensembl_mapping_dict: every gene to itself, retired ids to the gene they became, and
    # two entries whose target is not a token (Geneformer filters them out, so they cannot make
    # the collapse run)
    mapping = {gene(i): gene(i) for i in range(n_genes)}
    mapping.update({f"ENSG9{i:010d}": gene(i) for i in range(0, n_genes, 4)})
    mapping.update({"ENSG88888888888": "ENSG77777777777", "ENSG88888888889": "ENSG77777777777"})
    return token_dict, medians, mapping


def cells(X, ids):
    return CellMatrix(
        sp.csr_matrix(np.asarray(X, dtype=np.float64)),
        np.asarray(ids, dtype=object),
        None,
        np.arange(len(X)).astype(str),
    )


def saeflow_ids(tok, X, ids):
    tb = tok.encode(cells(X, ids))
    return [row[m == 1].tolist() for row, m in zip(tb.input_ids.numpy(), tb.attention_mask.numpy())]


def random_columns(rng, token_dict, mapping, n_cols):
    genes = [g for g in token_dict if g.startswith("ENSG")]
    aliases = [a for a in mapping if a not in token_dict]
    kinds = rng.choice(
        ["gene", "alias", "versioned", "unknown", "lower"], n_cols, p=[0.7, 0.1, 0.08, 0.07, 0.05]
    )
    ids = []
    for k in kinds:
        g = str(rng.choice(genes))
        ids.append(
            {
                "gene": g,
                "alias": str(rng.choice(aliases)),
                "versioned": g + ".3",
                "unknown": f"ENSG5{rng.integers(10**9):010d}",
                "lower": g.lower(),
            }[k]
        )
    return ids


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_tokenisation_matches_geneformer_reference(version):
    token_dict, medians, mapping = dictionaries()
    special = version == "V2"
    if not special:
        token_dict = {t: i for t, i in token_dict.items() if t not in ("<cls>", "<eos>")}
    rng = np.random.default_rng(1)
    branches = Counter()
    for trial in range(40):
        n_cols = int(rng.integers(5, 60))
        ids = random_columns(rng, token_dict, mapping, n_cols)
        if trial % 3 == 0:  # repeat a gene column: kept twice unless the collapse runs
            ids[int(rng.integers(n_cols))] = ids[0] = gene(int(rng.integers(40)))
        if trial % 5 == 1:  # no alias: nothing collapses
            ids = [g for g in ids if not g.startswith("ENSG9")] or [gene(0)]
        if trial % 5 == 2:  # a repeated id and the two entries filtered out of the mapping
            ids = [g for g in ids if not g.startswith("ENSG9")] + [gene(5), gene(5)]
            ids += ["ENSG88888888888", "ENSG88888888889"]
        X = rng.gamma(1.0, 3.0, (6, len(ids))) * (rng.random((6, len(ids))) < 0.6)
        use_mapping = trial % 4 != 3  # Geneformer without a mapping file: the identity
        m = mapping if use_mapping else None
        m_eff = {k: v for k, v in (m or {k: k for k in token_dict}).items() if v in token_dict}
        in_map = [g for g in ids if g in m_eff]
        branches[len(set(in_map)) == len({m_eff[g] for g in in_map})] += 1
        size = int(rng.integers(4, 30))
        tok = GeneformerTokenizer(token_dict, medians, size, special, gene_mapping=m)
        expected = reference_tokenize(X, ids, token_dict, medians, m, size, special)
        assert saeflow_ids(tok, X, ids) == expected, (trial, ids)
    assert branches[True] >= 5 and branches[False] >= 5  # both sides of the collapse decision


def test_the_three_cases_where_saeflow_used_to_differ():
    token_dict, medians, mapping = dictionaries()
    medians.update({gene(1): 1.0, gene(2): 1.0, gene(3): 1.0, gene(4): 1.0})
    tok = GeneformerTokenizer(token_dict, medians, 20, True, gene_mapping=mapping)
    alias_of_4 = "ENSG90000000004"
    # (a) an alias is mapped to its gene: alone it becomes that gene's token ...
    assert saeflow_ids(tok, [[5, 3, 9]], [gene(1), alias_of_4, gene(2)])[0][1:-1] == [
        token_dict[g] for g in (gene(2), gene(1), gene(4))
    ]
    # ... beside the gene it maps to, the two are summed (3 + 4 = 7 ranks above gene1's 5)
    got = saeflow_ids(tok, [[5, 3, 4]], [gene(1), alias_of_4, gene(4)])[0][1:-1]
    assert got == [token_dict[gene(4)], token_dict[gene(1)]]
    # (b) one id in two columns, nothing else collapsing: kept twice, each with its own count
    got = saeflow_ids(tok, [[5, 3, 4]], [gene(1), gene(3), gene(3)])[0][1:-1]
    assert got == [token_dict[g] for g in (gene(1), gene(3), gene(3))]
    # ... still twice beside an alias of a gene absent from the matrix (no two distinct ids map
    # to one gene) ...
    got = saeflow_ids(tok, [[5, 3, 4, 1]], [gene(1), gene(3), gene(3), alias_of_4])[0][1:-1]
    assert got == [token_dict[g] for g in (gene(1), gene(3), gene(3), gene(4))]
    # ... and summed once the collapse runs (an alias beside its gene in the same matrix)
    ids = [gene(1), gene(3), gene(3), alias_of_4, gene(4)]
    got = saeflow_ids(tok, [[5, 3, 4, 1, 2]], ids)[0][1:-1]
    assert got == [token_dict[g] for g in (gene(3), gene(1), gene(4))]
    # (c) a versioned id is dropped (with a warning naming the option)
    assert saeflow_ids(tok, [[5, 3]], [gene(1), gene(2) + ".7"])[0][1:-1] == [token_dict[gene(1)]]


def test_the_deviations_are_options():
    token_dict, medians, mapping = dictionaries()
    medians.update({gene(1): 1.0, gene(2): 1.0, gene(3): 1.0})
    ids = [gene(1), gene(3), gene(3), gene(2) + ".7"]
    X = [[5, 3, 4, 2]]
    default = GeneformerTokenizer(token_dict, medians, 20, True, gene_mapping=mapping)
    assert [token_dict[g] for g in (gene(1), gene(3), gene(3))] == saeflow_ids(default, X, ids)[0][
        1:-1
    ]
    strip = GeneformerTokenizer(
        token_dict, medians, 20, True, gene_mapping=mapping, strip_versions=True
    )
    assert saeflow_ids(strip, X, ids)[0][1:-1] == [
        token_dict[g] for g in (gene(1), gene(3), gene(3), gene(2))
    ]
    summed = GeneformerTokenizer(
        token_dict, medians, 20, True, gene_mapping=mapping, sum_repeated_ids=True
    )
    assert saeflow_ids(summed, X, ids)[0][1:-1] == [token_dict[g] for g in (gene(3), gene(1))]
    # collapse_gene_ids off: no mapping (the alias is dropped), repeated ids refused
    plain = GeneformerTokenizer(
        token_dict, medians, 20, True, gene_mapping=mapping, collapse_gene_ids=False
    )
    assert saeflow_ids(plain, [[5, 3]], [gene(1), "ENSG90000000004"])[0][1:-1] == [
        token_dict[gene(1)]
    ]
    with pytest.raises(SaeflowError, match=r"'ENSG00000000003' is in columns 1 and 2"):
        saeflow_ids(plain, X, ids)


def test_versioned_ids_dropped_with_a_warning(caplog):
    token_dict, medians, _ = dictionaries()
    tok = GeneformerTokenizer(token_dict, medians, 20, True, source="dict.pkl")
    with caplog.at_level(logging.WARNING, logger="saeflow.models.geneformer"):
        saeflow_ids(tok, [[1, 2, 3]], [gene(1) + ".2", gene(2) + ".5", gene(3)])
    assert "2 of 3 gene ids carry an Ensembl version" in caplog.text
    assert "strip_versions" in caplog.text


def test_load_geneformer_reads_the_mapping_beside_the_dictionary(tmp_path):
    d, tokens, _ = make_geneformer_dir(tmp_path, "V2")
    X, ids = [[5, 3]], [gene(1), "ENSG90000000004"]
    # no mapping file: the identity, the alias is dropped
    assert [g for g in load_model(d).tokenize(cells(X, ids)).genes[0] if g] == [gene(1)]
    with open(d / "ensembl_mapping_dict_gc104M.pkl", "wb") as fh:
        pickle.dump({gene(i): gene(i) for i in range(30)} | {"ENSG90000000004": gene(4)}, fh)
    ad = load_model(d)
    assert [g for g in ad.tokenize(cells(X, ids)).genes[0] if g] == [gene(1), gene(4)]
    # options reach the loader by family; "none" switches the mapping off
    ad = load_model(d, options={"geneformer": {"gene_mapping": "none"}, "scgpt": {"bogus": 1}})
    assert [g for g in ad.tokenize(cells(X, ids)).genes[0] if g] == [gene(1)]
    # an explicit path; a second file without the suffix makes "auto" ambiguous only if neither
    # carries the token dictionary's suffix
    other = tmp_path / "mine.pkl"
    with open(other, "wb") as fh:
        pickle.dump({"ENSG90000000004": gene(7)}, fh)
    ad = load_model(d, options={"geneformer": {"gene_mapping": str(other)}})
    assert [g for g in ad.tokenize(cells(X, ids)).genes[0] if g] == [gene(7)]
    (d / "ensembl_mapping_dict_gc104M.pkl").rename(d / "ensembl_mapping_dict_a.pkl")
    (d / "ensembl_mapping_dict_b.pkl").write_bytes((d / "ensembl_mapping_dict_a.pkl").read_bytes())
    with pytest.raises(SaeflowError, match="several Ensembl mapping dictionaries"):
        load_model(d)
    with open(d / "ensembl_mapping_dict_b.pkl", "wb") as fh:
        pickle.dump({"ENSG90000000004": 4}, fh)
    with pytest.raises(SaeflowError, match="value of 'ENSG90000000004' is 4, expected an id"):
        load_model(
            d, options={"geneformer": {"gene_mapping": str(d / "ensembl_mapping_dict_b.pkl")}}
        )
    assert tokens["<cls>"] == 2
