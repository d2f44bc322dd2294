"""The Prefect flows. Importing this package is the flows' entry point: it applies the
pipeline's environment defaults before Prefect is imported (Prefect reads its settings then)."""

from lm_pipeline import env

env.apply()
