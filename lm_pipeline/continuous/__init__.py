"""Continuous training: drops of new documents arrive under ct.watch (drops.py finds the new,
complete ones and keeps the ledger), each is checked alone and against the corpus (hygiene.py:
a bad drop is quarantined), and the champion is scored on it (drift.py) so that it is retrained
only when it has drifted."""
