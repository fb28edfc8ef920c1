# Input functions of the download rules (downloads.smk).


def get_encode_params(wildcards):
    """ENCODE file format, and the assembly of the (first) downloaded reference that uses it."""
    fmt = {ext: f for ext, f in ENCODE_FILES.values()}[wildcards.extension]
    assembly = ""
    for ref in config["references"].values():
        if ref["source"] == "download" and wildcards.accession in (
            ref["encode_peaks"],
            ref["encode_signal"],
        ):
            assembly = ref["assembly"]
            break
    return {"file_format": fmt, "assembly": assembly, **config["encode"]}


def get_download_targets():
    """Everything the configured sources download (the `downloads` rule: run it where there is
    internet, e.g. on a cluster's login node, before the compute jobs)."""
    out = []
    for name, ref in config["references"].items():
        if ref["source"] == "download":
            out.append(_raw_fasta(name))
            out += [f for f in (_ref_file(name, "peaks"), _ref_file(name, "signal")) if f]
    for name, d in config["datasets"].items():
        if d["kind"] == "task" and d["nt_task"] and not d["table"]:
            out.append(f"resources/nt_benchmark/{d['nt_task']}/task.parquet")
        if d["kind"] == "cells" and not (d["h5ad"] or d["builtin"] or d["pool"]):
            out.append(f"resources/cells/{name}.h5ad")
    for name, g in config["genesets"].items():
        out.append(
            f"resources/genesets/{name}.{'gmt' if g['source'] in ('enrichr', 'gmt') else 'tsv'}"
        )
    out += [f"resources/models/{m}" for m in _models_from("hub", "url")]
    return sorted(set(out))
