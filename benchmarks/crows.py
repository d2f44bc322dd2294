"""CrowS-Pairs on the real dataset: how long the evaluate stage's bias score takes on 2 cores.

    python -m benchmarks.crows path/to/crows_pairs_anonymized.csv [--model models/model]

The real CSV (1,508 pairs, CC BY-SA 4.0) is not shipped: download it from the dataset's repository
(nyu-mll/crows-pairs, data/crows_pairs_anonymized.csv). Scores it with the exported model (run
`make run` first) exactly as `evaluate.crows_pairs` pointed at it would. Keys:
crows_pairs_real_csv_seconds (scoring, module load excluded), crows_pairs_real_csv_pairs_per_s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import markdown_table, save_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="crows_pairs_anonymized.csv")
    parser.add_argument("--model", type=Path, default=Path("models/model"))
    args = parser.parse_args(argv)

    from lm_pipeline.config import EvaluateConfig
    from lm_pipeline.evaluation.metrics import load_metric
    from lm_pipeline.evaluation.probes import crows_pairs
    from lm_pipeline.model.backends import load_model

    model, tokenizer = load_model(args.model, "cpu")
    load_metric("crows_pairs")  # imports `evaluate` and `datasets` once, outside the timing
    start = time.perf_counter()
    result = crows_pairs(model, tokenizer, EvaluateConfig(crows_pairs=args.csv))
    seconds = time.perf_counter() - start
    results = {"crows_pairs_real_csv_seconds": seconds,
               "crows_pairs_real_csv_pairs_per_s": result["pairs"] / seconds}
    shown = {"pairs": result["pairs"], "stereotype_preference": result["stereotype_preference"]}
    print(markdown_table(results | shown))
    save_results(results)


if __name__ == "__main__":
    main()
