"""Assemble the Hugging Face Space folder of the dtrec demo, and push it when HF_TOKEN is set.

The Space holds app.py, the dtrec package, requirements.txt and a README whose
YAML header configures a Gradio Space. The demo it serves is either copied in
(`--assets DIR`, a `dtrec build-demo` folder, placed at assets/demo where app.py
looks by default) or referenced on the Hub through Space variables that app.py
reads: DTREC_DEMO (`--demo`, a demo repo from `dtrec publish-demo`) and
DTREC_MODEL (`--model`, a checkpoint repo overriding the demo's model).

The README's YAML front matter is written here, and only here (the
repository's own README has none). Its licence follows what the Space ships:
with a bundled demo trained on MovieLens or Amazon Reviews (posters, derived
catalog, weights) it is `license: other` with a link to that data's research-use
terms, as `dtrec.modelcard.default_license` decides for published weights;
otherwise, the Space holding only code, it is the code's Apache-2.0.

Without HF_TOKEN in the environment this is a dry run: the folder is written
and its path printed; nothing is uploaded. The token is never printed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from huggingface_hub import ModelCard, SpaceCardData  # noqa: E402

from dtrec.hub import DEMO_REQUIRED, HubError, split_repo_id, plan_folder, push_plan  # noqa: E402
from dtrec.modelcard import default_license, find_training_config  # noqa: E402

PYTHON_VERSION = "3.11"
# Gradio is installed by the Space runtime at `sdk_version`; listing it again can clash.
_SDK_PROVIDED = re.compile(r"^\s*gradio\b", re.IGNORECASE)


def build_space(out: Path, space_id: str, *, assets: Path | None, demo: str | None, model: str | None,
                title: str | None = None) -> dict[str, str]:
    """Write the Space folder to `out`; returns the Space variables it needs."""
    if out.exists() and any(out.iterdir()):
        raise HubError(f"output folder {out} is not empty; choose a new or empty folder.")
    if assets is None and demo is None:
        raise HubError("give --assets DIR (copied into the Space) or --demo REPO_ID (loaded from the Hub).")
    app = ROOT / "app.py"
    if not app.is_file():
        raise HubError(f"{app} is missing; the Space needs the Gradio app.")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(app, out / "app.py")
    shutil.copytree(ROOT / "dtrec", out / "dtrec", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    reqs = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if not _SDK_PROVIDED.match(line)]
    (out / "requirements.txt").write_text("\n".join(reqs) + "\n")
    if assets is not None:
        missing = [p for p in DEMO_REQUIRED if not (assets / p).is_file()]
        if missing:
            raise HubError(f"{assets} is not a dtrec demo folder (missing {', '.join(missing)}).")
        shutil.copytree(assets, out / "assets" / "demo", ignore=shutil.ignore_patterns(".*", "__pycache__"))
    variables = {k: v for k, v in (("DTREC_DEMO", demo), ("DTREC_MODEL", model)) if v}
    licence = space_license(assets)
    (out / "README.md").write_text(_readme(space_id, variables, title, bundled=assets is not None,
                                         licence=licence))
    return variables


def _demo_dataset_names(assets: Path) -> list[str]:
    """Names of the data a demo folder was built from: its card's `datasets`, its recipe, its training data."""
    names: list[str] = []
    readme = assets / "README.md"
    if readme.is_file():
        datasets = ModelCard(readme.read_text(encoding="utf-8"), ignore_metadata_errors=True).data.datasets
        names += [datasets] if isinstance(datasets, str) else list(datasets or [])
    results = assets / "results.json"
    if results.is_file():
        try:
            meta = json.loads(results.read_text(encoding="utf-8")).get("meta")
        except (json.JSONDecodeError, AttributeError):
            meta = None
        if isinstance(meta, dict) and isinstance(meta.get("recipe"), str):
            names.append(meta["recipe"])
    training = find_training_config(assets / "model")
    if training:
        names += [v for k in ("dataset", "dataset_name", "data", "data_dir")
                  if isinstance(v := training[1].get(k), str) and v.strip()]
    return names


def space_license(assets: Path | None) -> tuple[str, str | None, str | None]:
    """(license, license_name, license_link) of the Space: the bundled demo's data terms, else the code's."""
    for name in _demo_dataset_names(assets) if assets is not None else []:
        licence = default_license(name)
        if licence[0] != "apache-2.0":
            return licence
    return "apache-2.0", None, None


def _readme(space_id: str, variables: dict[str, str], title: str | None, bundled: bool,
            licence: tuple[str, str | None, str | None] = ("apache-2.0", None, None)) -> str:
    models, datasets = [], []
    for value in variables.values():
        repo_type, repo_id = split_repo_id(value)
        if repo_id and not Path(value).exists():
            (datasets if repo_type == "dataset" else models).append(repo_id)
    try:  # the metadata, not an import: importing gradio takes seconds
        sdk_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        sdk_version = None
    data = SpaceCardData(title=title or "dtrec: multi-modal two-tower recommender", sdk="gradio",
                         sdk_version=sdk_version, app_file="app.py", python_version=PYTHON_VERSION,
                         license=licence[0], license_name=licence[1], license_link=licence[2],
                         models=models or None, datasets=datasets or None,
                         emoji="🎬", colorFrom="indigo", colorTo="pink", pinned=False,
                         short_description="ID-free sequential recommendation with cold-start items")
    source = ("the demo folder bundled under `assets/demo`" if bundled else
              "the demo repo named by the Space variable `DTREC_DEMO`")
    env = "\n".join(f"| `{k}` | `{v}` |" for k, v in variables.items()) or "| (none) | |"
    return (f"---\n{data.to_yaml()}\n---\n\n# {title or 'dtrec demo'}\n\n"
            f"A Gradio demo of dtrec, a multi-modal, ID-free two-tower sequential recommender: build a "
            f"history, get recommendations, upload a new item and find it recommended at once. It serves "
            f"{source}.\n\n"
            "## Configuration (Space variables, read by app.py)\n\n"
            "| variable | value |\n| --- | --- |\n"
            f"{env}\n\n"
            "`DTREC_DEMO` is a demo folder or a Hub repo id of one (`dtrec publish-demo`; prefix `datasets/` "
            "for a dataset repo); `DTREC_MODEL` is a checkpoint folder or model repo id that replaces the "
            "demo's model. Both are resolved with `dtrec.hub.resolve_demo` / `resolve_model`; with "
            "`HF_HUB_OFFLINE=1` only the local cache is used.\n\n"
            "## Licence\n\n"
            f"{_licence_text(licence, bundled)}\n\n"
            f"Space: `{space_id}`.\n")


def _licence_text(licence: tuple[str, str | None, str | None], bundled: bool) -> str:
    if licence[0] == "other" and licence[2]:
        return ("The dtrec code is Apache-2.0. The bundled demo (catalog, thumbnails, embeddings and model "
                "weights) is derived from research data and is shared for research use under that data's "
                f"terms ({licence[2]}); see `assets/demo/NOTICE.md`. Hence `license: other`.")
    if bundled:
        return (f"`{licence[0]}`. The bundled demo folder keeps the terms of the data it was built from; "
                "see `assets/demo/NOTICE.md`.")
    return (f"The code in this Space is `{licence[0]}`. The demo and model it loads from the Hub keep "
            "their own licences (see their cards).")


def main(argv: list[str] | None = None) -> int:
    """Build the Space folder; push it when HF_TOKEN is set, else print where the dry run is."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space_id", help="USER/NAME of the Space")
    p.add_argument("--assets", type=Path, default=None, help="demo folder to bundle (dtrec build-demo output)")
    p.add_argument("--demo", default=None, help="demo repo id on the Hub (sets DTREC_DEMO)")
    p.add_argument("--model", default=None, help="checkpoint repo id on the Hub (sets DTREC_MODEL)")
    p.add_argument("--out", type=Path, default=None, help="where to write the Space folder (default: a temp folder)")
    p.add_argument("--title", default=None)
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="dtrec-space-"))
    try:
        variables = build_space(out, args.space_id, assets=args.assets, demo=args.demo, model=args.model,
                                title=args.title)
        if not os.environ.get("HF_TOKEN"):
            print(f"dry run (HF_TOKEN is not set): Space folder for {args.space_id} written to {out}")
            for k, v in variables.items():
                print(f"would set Space variable {k}={v}")
            return 0
        from huggingface_hub import HfApi

        api = HfApi()
        url = push_plan(plan_folder(out), args.space_id, repo_type="space", space_sdk="gradio",
                        private=args.private, commit_message="Update dtrec demo Space", api=api)
        for k, v in variables.items():
            api.add_space_variable(args.space_id, k, v)
    except (HubError, OSError) as e:
        print(f"space: error: {e}", file=sys.stderr)
        return 2
    print(f"pushed Space {args.space_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
