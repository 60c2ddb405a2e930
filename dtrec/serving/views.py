"""What the service's queries return: items as the UI and API show them, ranked, with the call's latency."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ItemView:
    """What the UI/API shows for one item."""

    id: str
    title: str
    text: str
    image: str | None  # absolute path of the stored image, or None
    meta: dict = field(default_factory=dict)
    is_new: bool = False  # uploaded, never interacted with


@dataclass
class Recommendation:
    """One ranked item with its score and the history item most responsible for it."""

    item: ItemView
    rank: int
    score: float
    reason: str
    reason_id: str | None = None


@dataclass
class Result:
    """Ranked items and the wall time of the call that made them."""

    items: list[Recommendation]
    latency_ms: float
