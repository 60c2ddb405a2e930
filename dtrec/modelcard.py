"""Model cards generated from a checkpoint's own files, never typed by hand.

Everything on the card comes from `config.json` (architecture, encoder,
modality dims), from `results.json` (the evaluation table of the run that made
the checkpoint, baselines included) and, when present beside the checkpoint,
from the training run's resolved config. The YAML header follows the Hub's
model card metadata so that the test metrics appear as `model-index` results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from dtrec.config import read_checkpoint_config
from dtrec.results import METRIC_KEYS, METRIC_NAMES, PROVENANCE_KEY, markdown_table, metric_table, results_table
from dtrec.weights import SHIPPED, shipped_checkpoint

SPLITS = ("test", "cold_start", "valid")
# Names baselines are written under in results.json; the model being published is any other entry.
BASELINE_NAMES = ("popularity", "pop", "sasrec", "content-knn", "random", "most_popular")
# Where the training loop may leave its resolved config, in order of preference.
TRAINING_CONFIG_NAMES = ("train_config.json", "finetune_config.json", "training_config.json",
                         "resolved_config.json", "pretrain_config.json")
TAGS = ["recommendation", "sequential-recommendation", "multimodal", "two-tower", "retrieval",
        "cold-start", "pytorch", "dtrec"]
# The Hub has no recommendation task: the towers output embedding vectors scored by a dot
# product, which is what the modality-agnostic `feature-extraction` pipeline denotes.
PIPELINE_TAG = "feature-extraction"
TASK_TYPE = "sequential-recommendation"
TASK_NAME = "Sequential Recommendation"

_DATA_NOTICES = {
    "movielens": (
        "MovieLens data (GroupLens Research, University of Minnesota; F. M. Harper and J. A. Konstan, "
        "\"The MovieLens Datasets: History and Context\", ACM TiiS 2015) is used for research under its "
        "licence: acknowledge GroupLens, no endorsement implied, no redistribution of the data without "
        "permission. This repository holds no MovieLens rating file. Movie posters (via the public "
        "`antonsteenvoorden/ml1m-images` list) are the copyright of their owners and serve as research "
        "thumbnails only."
    ),
    "amazon": (
        "Amazon Reviews 2018 (J. Ni, J. Li, J. McAuley, EMNLP 2019), \"Industrial & Scientific\" "
        "multi-modal subset as processed by UniSRec / MISSRec / DeCoRec (CLIP ViT-B/32 features); "
        "research use. This repository holds none of the review data."
    ),
}


# GroupLens' README of each MovieLens release, which states its terms.
_MOVIELENS_TERMS = {"100k": "https://files.grouplens.org/datasets/movielens/ml-100k-README.txt",
                    "1m": "https://files.grouplens.org/datasets/movielens/ml-1m-README.txt"}


# Weights trained on these data sets inherit their research-use terms, so their cards say
# `license: other` and link the data's terms; the code stays Apache-2.0.
_DATA_LICENCES = {
    "movielens": ("movielens-research-terms", _MOVIELENS_TERMS["100k"]),
    "amazon": ("amazon-reviews-research-terms", "https://cseweb.ucsd.edu/~jmcauley/datasets/amazon_v2/"),
}


def movielens_release(dataset_name: str) -> str | None:
    """Which MovieLens release a data set's name names ("movielens-1m" -> "1m", else "100k"); None if not MovieLens.

    A MovieLens name without its size is taken for 100K, the release the demo was first built on."""
    if _data_kind(dataset_name) != "movielens":
        return None
    return "1m" if "1m" in dataset_name.lower().replace("-", "").replace("_", "") else "100k"


def _data_kind(dataset_name: str) -> str | None:
    low = dataset_name.lower()
    aliases = {"movielens": ("movielens", "ml-", "ml1m", "ml100k"), "amazon": ("amazon", "scientific")}
    return next((key for key, names in aliases.items() if any(a in low for a in names)), None)


def default_license(dataset_name: str) -> tuple[str, str | None, str | None]:
    """(license, license_name, license_link) for weights trained on `dataset_name`: the data's terms when known."""
    kind = _data_kind(dataset_name)
    if kind == "movielens":
        return "other", _DATA_LICENCES[kind][0], _MOVIELENS_TERMS[movielens_release(dataset_name)]
    if kind in _DATA_LICENCES:
        return ("other", *_DATA_LICENCES[kind])
    return "apache-2.0", None, None


class ModelCardError(ValueError):
    """A checkpoint or results file that cannot be described on a model card."""


def _read_json(path: Path, what: str) -> Any:
    """Parsed JSON of `path`; ModelCardError naming `what` and the line when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelCardError(f"{what} is not valid JSON (line {e.lineno}).") from None


def _dual_tower_config(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The DualTower config of a checkpoint; ModelCardError when it has none."""
    try:
        cfg = read_checkpoint_config(checkpoint_dir)
    except FileNotFoundError:
        raise ModelCardError(f"{checkpoint_dir} holds no config.json; is it a DualTower checkpoint folder?") from None
    except json.JSONDecodeError as e:
        raise ModelCardError(f"{Path(checkpoint_dir) / 'config.json'} is not valid JSON (line {e.lineno}).") from None
    if not isinstance(cfg, dict) or "encoder" not in cfg or "modality_dims" not in cfg:
        raise ModelCardError(f"{checkpoint_dir}/config.json has no 'encoder' / 'modality_dims'; "
                             "is it a DualTower config?")
    return cfg


def find_training_config(checkpoint_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The training run's resolved config beside the checkpoint (in it or its parent), if any."""
    ckpt = Path(checkpoint_dir)
    for folder in (ckpt, ckpt.parent):
        for name in TRAINING_CONFIG_NAMES:
            path = folder / name
            if path.is_file():
                try:
                    return path, json.loads(path.read_text())
                except json.JSONDecodeError:
                    continue
    return None


def load_results(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """Read and check a results.json: {model: {split: {metric: value}}}."""
    path = Path(path)
    if not path.is_file():
        raise ModelCardError(f"results file {path} does not exist.")
    results = _read_json(path, f"results file {path}")
    check_results(results, str(path))
    return results


def check_results(results: Any, where: str = "results") -> None:
    """Raise ModelCardError unless `results` maps model -> split -> metric -> number (plus optional "meta")."""
    if not isinstance(results, dict) or not metric_table(results):
        raise ModelCardError(f"{where} must map model names to their splits' metrics.")
    if not isinstance(results.get(PROVENANCE_KEY, {}), dict):
        raise ModelCardError(f"{where}: entry {PROVENANCE_KEY!r} must be an object.")
    for model, splits in metric_table(results).items():
        if not isinstance(splits, dict):
            raise ModelCardError(f"{where}: entry {model!r} must map splits to metrics.")
        for split, metrics in splits.items():
            if not isinstance(metrics, dict) or not all(
                    isinstance(v, (int, float)) for k, v in metrics.items() if k in METRIC_KEYS):
                raise ModelCardError(f"{where}: {model!r} / {split!r} must map metric names to numbers.")


def main_model_name(results: dict[str, Any]) -> str:
    """The results entry of the published model: 'dtrec' if present, else the first non-baseline."""
    if "dtrec" in results:
        return "dtrec"
    for name in results:
        if name.lower() not in BASELINE_NAMES:
            return name
    return next(iter(results))


def eval_results(results: dict[str, Any], dataset_name: str, *, model: str | None = None) -> list[EvalResult]:
    """model-index entries: every metric of the published model on the test and cold-start splits."""
    model = model or main_model_name(results)
    out = []
    for split in ("test", "cold_start"):
        metrics = results.get(model, {}).get(split) or {}
        suffix = " (cold-start items)" if split == "cold_start" else ""
        for key in METRIC_KEYS:
            if key in metrics:
                out.append(EvalResult(
                    task_type=TASK_TYPE, task_name=TASK_NAME,
                    dataset_type=dataset_name,
                    dataset_name=_pretty_dataset(dataset_name) + suffix,
                    dataset_split=split, metric_type=key, metric_name=METRIC_NAMES[key],
                    metric_value=float(metrics[key])))
    return out


def make_model_card(checkpoint_dir: str | Path, results: dict | None, *, dataset_name: str,
                    recipe: str | None = None, repo_id: str | None = None,
                    license: str | None = None) -> ModelCard:
    """A Hub model card built from the checkpoint's config.json, `results` and its training config.

    `license` None: `default_license(dataset_name)` (weights trained on MovieLens or Amazon Reviews
    carry those data sets' research-use terms; others Apache-2.0, like the code).
    """
    cfg = _dual_tower_config(checkpoint_dir)
    provenance: dict = {}
    if results is not None:
        check_results(results)
        provenance = results.get(PROVENANCE_KEY, {})
        results = metric_table(results)
    training = find_training_config(checkpoint_dir)
    if recipe is None and provenance.get("recipe"):
        # The recipe that produced the results table is the command to rerun, not one step of it.
        recipe = f"bash scripts/{provenance['recipe']}.sh OUTDIR   # commit {provenance.get('commit', 'unknown')}"
    if recipe is None and training:
        recipe = _recorded_command(training[1])
    model_name = repo_id.split("/")[-1] if repo_id else f"dtrec-{_slug(dataset_name)}"
    evals = eval_results(results, dataset_name) if results else None
    license_name = license_link = None
    if license is None:
        license, license_name, license_link = default_license(dataset_name)
    data = ModelCardData(
        library_name="dtrec", license=license, license_name=license_name, license_link=license_link,
        tags=list(TAGS), datasets=[dataset_name], pipeline_tag=PIPELINE_TAG, model_name=model_name,
        eval_results=evals or None,
    )
    body = "\n".join(_body(cfg, results, dataset_name, recipe, training, repo_id or "USER/NAME", model_name,
                           notice=_read_notice(checkpoint_dir), licence=_licence_text(license, license_link)))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# --------------------------------------------------------------------------- body sections
def _body(cfg: dict, results: dict | None, dataset_name: str, recipe: str | None,
          training: tuple[Path, dict] | None, repo_id: str, model_name: str, notice: str | None,
          licence: str) -> list[str]:
    dims = cfg.get("modality_dims", {})
    mods = " + ".join(dims) or "no modality"
    lines = [
        f"# {model_name}",
        "",
        f"A multi-modal, ID-free two-tower sequential recommender (dtrec, after Song et al., "
        f"2023, arXiv:2304.13277) trained on **{_pretty_dataset(dataset_name)}**. The item tower turns an item's "
        f"content ({mods} features from a frozen encoder) into an embedding; the user tower reads a browsing "
        "history and predicts the embedding of the next item, which retrieves items by cosine similarity. "
        "Items are known only by their content, so new items and new catalogs are served without retraining.",
        "",
        "## Encoder this checkpoint needs",
        "",
        f"Item features must come from the encoder **`{cfg.get('encoder', '')}`** with these dimensions "
        "(checked on load; other features are refused):",
        "",
        *markdown_table(["modality", "dimension"], dims.items()),
        "",
        f"Extract them with `dtrec extract DATA --encoder {cfg.get('encoder', '')}`.",
        "",
        "## Architecture (config.json)",
        "",
        *markdown_table(["setting", "value"], [(k, _fmt_value(cfg[k])) for k in (
            "tower", "d_model", "n_layers", "n_heads", "d_ff", "dropout", "emb_dropout", "max_len", "share_towers",
            "objective", "temperature", "repeat_bias", "content_lags") if k in cfg]),
        "",
        "## Training",
        "",
    ]
    if recipe:
        lines += ["The command that produced these weights:", "", "```bash", recipe.strip(), "```", ""]
    if training and training[1].get("git_commit"):
        lines += [f"Trained from dtrec commit `{training[1]['git_commit']}`.", ""]
    if training:
        lines += [f"Resolved training configuration (`{training[0].name}`):", "", "```json",
                  json.dumps(training[1], indent=2, sort_keys=True), "```", ""]
    if not recipe and not training:
        lines += ["No training recipe or resolved training configuration was stored beside this checkpoint.", ""]
    lines += ["## Results", ""]
    if results:
        lines += [
            "Leave-one-out per user (last item = test, second-to-last = validation), full ranking over every "
            "item of the catalog (no sampled negatives), checkpoint chosen on validation NDCG@10. Baselines "
            "come from the same run, data and evaluation code.",
            "",
        ]
        main = main_model_name(results)
        init = training[1].get("init") if training else None
        for split, title in (("test", "Test"), ("cold_start", "Cold-start items (test cases whose target was "
                                                                "never seen in training)"), ("valid", "Validation")):
            table = results_table(results, split, main)
            if table:
                lines += [f"### {title}", ""]
                if init and split == "cold_start":  # "never seen in training" holds for the fine-tuning only
                    lines += [_init_cold_note(init), ""]
                lines += [*table, ""]
    else:
        lines += ["No evaluation results were published with this checkpoint.", ""]
    lines += [
        "## Limitations",
        "",
        "- Quality depends on the content features: items whose text or image is poor or missing are "
        "recommended less reliably, and the model only works with features of the encoder named above.",
        f"- Trained on one catalog ({_pretty_dataset(dataset_name)}); numbers on other domains are not "
        "measured here, and popularity biases of the training interactions carry over.",
        f"- Histories longer than {cfg.get('max_len', '?')} items are truncated to their most recent part.",
        "- A research artefact: not evaluated for fairness, and not meant for decisions about people.",
        "",
        "## Data notice",
        "",
        notice or _data_notice_for(dataset_name),
        "",
        licence,
        "",
        "## Usage",
        "",
        "```python",
        "from dtrec.model import DualTower",
        f'model = DualTower.from_pretrained("{repo_id}")  # config.json + model.safetensors, strict key check',
        "",
        "from dtrec.service import Recommender",
        "from dtrec.hub import resolve_demo",
        'rec = Recommender.from_folder(resolve_demo("path/or/USER/demo-repo"))  # a demo folder (dtrec build-demo)',
        'print(rec.recommend(history_ids=["<item id>", "<item id>"], k=10).items[0])',
        "```",
        "",
        "Offline (`HF_HUB_OFFLINE=1`), a repo id loads only from the local Hugging Face cache.",
    ]
    return lines


def checkpoint_card(title: str, description: str, tags: list[str]) -> ModelCard:
    """The short card `save_pretrained` writes beside a checkpoint (in place of huggingface_hub's generic one).

    It names no licence: the weights follow the terms of the data they were trained on, which only the run
    knows; `dtrec publish` replaces it with the full card (`make_model_card`)."""
    data = ModelCardData(library_name="dtrec", tags=["dtrec", *tags])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{description}\n\n"
                     "This card is the one training writes beside every checkpoint. It names no licence: the "
                     "weights follow the terms of the data they were trained on. `dtrec publish` replaces it with "
                     "the full card (results, data, licence), see the project's docs/hub.md.\n")


def init_data_sets(init: str) -> list[str] | None:
    """The data sets the checkpoint `init` was trained on, from its run record; None when it cannot be found."""
    folder = Path(init)
    # The shipped init is recorded as .../dtrec/weights/NAME, relative to where the run started.
    if not folder.exists() and folder.name in SHIPPED and folder.parts[-3:-1] == ("dtrec", "weights"):
        try:
            folder = shipped_checkpoint(folder.name)
        except FileNotFoundError:
            return None
    found = find_training_config(folder)
    if found is None:
        return None
    record = found[1]
    if isinstance(record.get("sources"), dict):
        return sorted(record["sources"])
    data = record.get("data")
    names = [data] if isinstance(data, str) else data if isinstance(data, list) else []
    return sorted(Path(str(d)).name for d in names) or None


def _shown_init(init: str) -> str:
    """How a card names `init`: the shipped model by its place in the package, not in the checkout it ran from."""
    folder = Path(init)
    return f"dtrec/weights/{folder.name}" if folder.name in SHIPPED and folder.parts[-3:-1] == ("dtrec", "weights") \
        else init


def _init_cold_note(init: str) -> str:
    """What "never seen in training" means for a model fine-tuned from `init`."""
    start = f"This model was fine-tuned from `{_shown_init(init)}`"
    names = init_data_sets(init)
    if names is None:
        return (start + ". Items that checkpoint was trained on are not unseen for it, so these rows measure cold "
                "start only for items outside its training data too.")
    return (start + f", which was trained on {', '.join(names)}, each data set's cold-start items left out as they "
            "are here. An item of this catalog that one of those data sets trained on (as one of its warm items, "
            "under its own row) was seen in that training, so these rows measure cold start for the others only.")


def _recorded_command(record: dict[str, Any]) -> str | None:
    """The command a run record stored, as a string ('command' or an 'argv' list)."""
    if isinstance(record.get("command"), str):
        return record["command"]
    if isinstance(record.get("argv"), list):
        import shlex

        return shlex.join(str(a) for a in record["argv"])
    return None


def _licence_text(license: str, link: str | None) -> str:
    if license == "other" and link:
        return (f"Licence: the dtrec code is Apache-2.0; these weights are derived from the training data and "
                f"are published for research use under its terms ({link}), hence `license: other`.")
    return f"Licence: `{license}`."


def _read_notice(checkpoint_dir: str | Path) -> str | None:
    ckpt = Path(checkpoint_dir)
    for folder in (ckpt, ckpt.parent):
        path = folder / "NOTICE.md"
        if path.is_file():
            return path.read_text().strip()
    return None


def _data_notice_for(dataset_name: str) -> str:
    kind = _data_kind(dataset_name)
    if kind in _DATA_NOTICES:
        return _DATA_NOTICES[kind]
    return (f"Trained on `{dataset_name}`; see that data set's own licence and terms. "
            "This repository holds no training data.")


def _pretty_dataset(name: str) -> str:
    known = {"movielens-100k": "MovieLens 100K", "ml-100k": "MovieLens 100K", "movielens-1m": "MovieLens 1M",
             "ml-1m": "MovieLens 1M", "ml1m": "MovieLens 1M",
             "amazon-scientific": "Amazon Reviews 2018 Industrial & Scientific", "scientific":
             "Amazon Reviews 2018 Industrial & Scientific"}
    return known.get(name.lower(), name)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "model"


def _fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else str(v)
