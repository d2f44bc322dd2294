from lm_pipeline.model.generate import generate
from lm_pipeline.model.transformer import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "generate"]
