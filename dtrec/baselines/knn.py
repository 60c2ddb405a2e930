"""The content kNN baseline: the frozen encoders' features with no training at all.

An item's vector is its modalities' L2-normalised features, concatenated (a missing
modality contributes zeros) and normalised again; a user's query is the vector of
the last history item (`query="last"`) or the normalised mean over the history
(`"mean"`); the score of an item is its cosine with the query. An ID-free model
that learns from interactions has to beat this: it is what the features already know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dtrec.features import Features, content_vectors

QUERIES = ("last", "mean")


@dataclass
class ContentKNNConfig:
    """What a content-kNN checkpoint's config.json holds: the features it reads and how it queries."""

    encoder: str
    query: str = "last"
    model_type: str = "content-knn"

    def __post_init__(self):
        if self.query not in QUERIES:
            raise ValueError(f"query must be one of {QUERIES}, not {self.query!r}")
        if self.model_type != "content-knn":
            raise ValueError(f"config model_type is {self.model_type!r}, not 'content-knn'")


def item_vectors(features: Features) -> torch.Tensor:
    """(N, sum of dims) unit vectors: per-modality normalised features side by side, normalised again."""
    return content_vectors(features.values, features.present)


class ContentKNN:
    """Cosine between the query built from a history and every item's content vector."""

    def __init__(self, config: ContentKNNConfig, features: Features):
        self.config = config
        self.items = item_vectors(features)

    @torch.no_grad()
    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, N) cosines of each history's query with every item."""
        if self.config.query == "last":
            query = self.items[torch.tensor([h[-1] for h in histories], dtype=torch.long)]
        else:
            query = torch.stack([self.items[torch.tensor(h, dtype=torch.long)].mean(0) for h in histories])
        return F.normalize(query, dim=-1) @ self.items.T

    def save_pretrained(self, out: str | Path) -> Path:
        """Write `out/config.json` (there are no weights)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, features: Features) -> "ContentKNN":
        """Read `path/config.json` and build the model over `features` (which must come from its encoder)."""
        cfg = ContentKNNConfig(**json.loads((Path(path) / "config.json").read_text()))
        if features.encoder != cfg.encoder:
            raise ValueError(f"{path} ranks {cfg.encoder!r} features, not {features.encoder!r}")
        return cls(cfg, features)
