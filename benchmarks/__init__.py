"""dtrec's measuring lab: speed, memory and scale of training, serving, cold start and feature extraction.

Not part of the installed `dtrec` package: it reads the repository (git state, test fixtures,
prepared data under data/, assets/demo, app.py) and runs from the repository root as
`python -m benchmarks` (docs/performance.md). Modules, by what they measure:

- `training`: dtrec's fine-tuning step vs SASRec's vs the bare loop (`bare`, a deliberate copy
  of dtrec's model kept equal by tests/test_bare.py); step time vs catalog size and history length.
- `serving`: exact / HNSW / IVF-PQ indexes, the user tower, `Recommender.recommend`, the HTTP API,
  `add_item` by stage.
- `features`: frozen-encoder extraction, items/s.
- `data`: the synthetic inputs and the demo folder the others measure on.
- `report`: the targets and `bench.md` / `bench.json` / `bench.png`; `run`: the whole run.

Every measurement is a function returning a plain dict (JSON-ready).
"""
