"""The Recommender's parts, one job each (`dtrec.service.Recommender` ties them together and is what callers use).

- `errors`: `InputError` / `ImageError` (one sentence for the user) and the units those sentences use.
- `views`: `ItemView`, `Recommendation`, `Result`, what every query returns.
- `sessions`: `session_scope`, and `Sessions`, which rows a browser session may see.
- `uploads`: validation of an upload's text and image (a safe, small RGB thumbnail or `ImageError`).
- `limits`: `UploadLimits`, the caps on uploads and which uploads make room.
- `encoding`: `ContentEncoder`, the frozen encoder loaded once on first use, and one item's features.
- `sync`: the store seeded from the catalog and refreshed when catalog, weights or encoder change.
"""
