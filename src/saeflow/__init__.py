"""saeflow: sparse-autoencoder features of biological foundation models.

The library behind the Snakemake workflow in ``workflow/``. Every rule script
is a thin recipe over functions from these modules, so everything here is
importable and unit-tested on its own.
"""

__version__ = "0.1.0"
