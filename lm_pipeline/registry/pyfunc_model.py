"""The registered model, as an MLflow "model from code": MLflow runs this file on load.

The weights travel as safetensors in the `model_dir` artifact, so loading unpickles nothing.
Input: a DataFrame with a `prompt` column. Output: one generated continuation per prompt; prompts
of the same length share forward passes, and each continuation ends before the first `stop` string.
The model runs on the GPU when the server has one.
"""

from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from lm_pipeline.data.tokenizer import reading_prompts
from lm_pipeline.model.backends import load_model, resolve_device, weights_sha256
from lm_pipeline.model.generate import complete_batch


class LanguageModel(PythonModel):
    def load_context(self, context):
        self.model, tokenizer = load_model(context.artifacts["model_dir"], device=resolve_device("auto"))
        self.tokenizer = reading_prompts(tokenizer)  # as the endpoint reads them
        recorded = (context.model_config or {}).get("weights_sha256")
        if recorded != weights_sha256(self.model):  # the weights file was changed after registration
            raise ValueError(f"model_dir: its weights hash is not the one recorded at registration "
                             f"({(recorded or 'none')[:12]}...): refusing to load it")

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        params = params or {}
        generator = torch.Generator().manual_seed(int(params.get("seed", 0)))
        sampling = {"temperature": float(params.get("temperature", 0.0)),
                    "top_k": int(params.get("top_k", 0)) or None,
                    "top_p": float(params.get("top_p", 1.0))}
        return complete_batch(self.model, self.tokenizer, list(model_input["prompt"]),
                              int(params.get("max_new_tokens", 32)), stop=list(params.get("stop") or []),
                              generator=generator, **sampling)


mlflow.models.set_model(LanguageModel())
