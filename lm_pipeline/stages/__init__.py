"""The pipeline's stages, in order: the one list the CLI, the flows and the tests read.

dvc.yaml declares the same stages (each runs `lmp <stage>`); a test keeps the two equal.
"""

STAGES = {
    "ingest": "materialize the corpus as documents in data/raw/",
    "validate": "check the documents with Great Expectations",
    "preprocess": "train the tokenizer and write token files",
    "train": "train the Transformer with Ray Train",
    "evaluate": "perplexity, BLEU and bias probes",
    "register": "register in MLflow and gate the champion",
}
