"""The popularity baseline: every user gets the items most often seen in training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from dtrec.data.catalog import Dataset


@dataclass
class PopularityConfig:
    """What a popularity checkpoint's config.json holds."""

    num_items: int
    model_type: str = "popularity"


class PopularityModel(nn.Module, PyTorchModelHubMixin):
    """Scores each item by its number of occurrences in the training sequences."""

    def __init__(self, config: PopularityConfig):
        super().__init__()
        if isinstance(config, dict):
            config = PopularityConfig(**config)
        if config.model_type != "popularity":
            raise ValueError(f"config model_type is {config.model_type!r}, not 'popularity'")
        self.config = config
        self.register_buffer("counts", torch.zeros(config.num_items, dtype=torch.float32))

    @classmethod
    def fit(cls, dataset: Dataset) -> "PopularityModel":
        """Count item occurrences over `dataset.train_sequences()`."""
        model = cls(PopularityConfig(num_items=len(dataset.catalog)))
        flat = [i for s in dataset.train_sequences() for i in s]
        if flat:
            model.counts += torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=len(dataset.catalog)).float()
        return model

    @torch.no_grad()
    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, N) scores: the same popularity vector for every history."""
        return self.counts.unsqueeze(0).expand(len(histories), -1)
