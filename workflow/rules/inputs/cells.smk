# Input functions of the cell-atlas rules (cells.smk): gene-set libraries and gene networks.


def get_geneset_gmts(wildcards):
    """The GMT files a cell dataset's features are tested against (name -> path)."""
    return {
        gs: (
            "resources/genesets/pbmc68k_markers.gmt"
            if gs == "pbmc68k_markers"
            else f"resources/genesets/{gs}.gmt"
        )
        for gs in get_dataset(wildcards)["genesets"]
    }


BUILTIN_NETWORKS = {"pbmc68k_crispri_trrust": "resources/genesets/pbmc68k_crispri_trrust.tsv"}


def is_trrust(net):
    """TRRUST networks are directed (TF -> target) and feed the regulatory-logic test."""
    return net in BUILTIN_NETWORKS or config["genesets"][net]["source"] == "trrust"


def get_network_tables(wildcards):
    """The edge tables (TRRUST / STRING) of a cell dataset (name -> path)."""
    return {
        f"net_{n}": BUILTIN_NETWORKS.get(n, f"resources/genesets/{n}.tsv")
        for n in get_dataset(wildcards)["networks"]
    }
