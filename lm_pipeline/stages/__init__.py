"""The pipeline's stages: one module each in this package (`run(cfg)` and its I/O; the work is
in the component libraries beside it), and STAGES, in order, the one list the CLI, the flows and
the tests read. dvc.yaml declares the same stages (each runs `lmp <stage>`); tests keep the
modules, STAGES, dvc.yaml and the CLI equal (tests/test_architecture.py).
"""

STAGES = {
    "ingest": "materialize the corpus as documents in data/raw/",
    "validate": "check the documents with Great Expectations",
    "filter": "remove or redact documents: heuristics, language, personal data, duplicates",
    "preprocess": "train the tokenizer and write token files",
    "train": "train the Transformer with Ray Train",
    "evaluate": "perplexity, BLEU and bias probes",
    "register": "register in MLflow and gate the champion",
}
