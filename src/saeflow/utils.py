"""Small shared helpers: logging for rule scripts, atomic writes, seeding."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger("saeflow")


# An Ensembl gene id with its version suffix (``ENSG00000243485.5``; any species' ``ENS*G``).
ENSEMBL_VERSIONED = re.compile(r"^(ENS[A-Z]*G\d{11})\.\d+$")


class SaeflowError(RuntimeError):
    """An error whose message is meant for the user: it names the file and the problem."""


def setup_logging(
    logfile: str | os.PathLike | None = None, level: int = logging.INFO
) -> logging.Logger:
    """Send the ``saeflow`` logger (and warnings, and stderr) to ``logfile``.

    Rule scripts call this first with ``snakemake.log[0]`` so that everything a
    step prints, tqdm progress bars included, lands in the rule's log.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        fh = open(logfile, "a", buffering=1)
        handlers = [logging.StreamHandler(fh)]
        # tqdm writes to stderr: send it to the log as well.
        sys.stderr = fh
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    return log


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        pass
    return np.random.default_rng(seed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Works for files and directories. On an exception the temporary is removed,
    so a failed step leaves nothing half-written under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / (path.name + suffix)
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_table(df, path: str | os.PathLike) -> None:
    """Write a DataFrame atomically as parquet or TSV (by extension)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, sep="\t", index=False)


def read_table(path: str | os.PathLike):
    import pandas as pd

    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t")


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def setup_job(smk) -> None:
    """Start of a rule script: log to the rule's log, then claim the job's GPUs.

    ``resources.gpu`` of the job (set by the GPU profiles) is how many devices it claims
    (see :mod:`saeflow.gpu`); with 0 nothing changes.
    """
    from saeflow.gpu import claim_gpus

    setup_logging(smk.log[0])
    claim_gpus(int(smk.resources.get("gpu", 0) or 0))


def torch_device(prefer: str = "auto"):
    """CUDA when present (and not refused), else CPU."""
    import torch

    if prefer == "cpu":
        return torch.device("cpu")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise SaeflowError(
            "device 'cuda' requested but torch sees no CUDA device (use device: auto or cpu)"
        )
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
