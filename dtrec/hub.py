"""Publishing checkpoints and demo folders to the Hugging Face Hub, and loading them back.

Uploads go through `HfApi.create_commit`, one commit per publish. The token is
never handled here: `huggingface_hub` finds it in `HF_TOKEN` or the login cache,
and nothing in this module prints or logs it. Every publish is first planned as
a mapping `path in repo -> local file or bytes`; `--dry-run DIR` writes exactly
that mapping to DIR, so what is inspected is what would be uploaded.

Loading (`resolve_model`, `resolve_demo`) accepts a local folder or a repo id;
repo ids go through `snapshot_download`, which honours `HF_HUB_OFFLINE=1` by
using only the local cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, DatasetCardData, HfApi, ModelCard, constants, get_token
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from dtrec.config import checkpoint_folder
from dtrec.modelcard import check_results, find_training_config, load_results, make_model_card

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "model.safetensors")
DEMO_REQUIRED = ("model/config.json", "model/model.safetensors", "catalog/items.parquet")
# Files a checkpoint repo may hold that loading needs or documents; nothing else is downloaded.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.md"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SKIP = re.compile(r"(^|/)(\.[^/]*|__pycache__)(/|$)|\.tmp$")


class HubError(ValueError):
    """A publish or load request that cannot be served, said in one sentence."""


class NotCachedError(HubError):
    """A repo id that is not in the local cache while the Hub cannot be used."""


# --------------------------------------------------------------------------- loading
def resolve_model(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder for a folder path or a Hub repo id (downloaded or from the cache)."""
    folder = _resolve(path_or_repo_id, revision, what="model", allow_patterns=MODEL_PATTERNS)
    if not (folder / "config.json").is_file():
        raise HubError(f"{path_or_repo_id} holds no config.json; is it a dtrec checkpoint?")
    return folder


def resolve_demo(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """A local demo folder (layout of `dtrec build-demo`) for a folder path or a Hub repo id.

    A repo id may carry the Hub's type prefix, `datasets/USER/NAME`, for a demo
    published with `dtrec publish-demo --repo-type dataset`.
    """
    folder = _resolve(path_or_repo_id, revision, what="demo", allow_patterns=None)
    missing = [p for p in DEMO_REQUIRED if not (folder / p).is_file()]
    if missing:
        raise HubError(f"{path_or_repo_id} is not a dtrec demo folder (missing {', '.join(missing)}).")
    return folder


def _resolve(source: str | Path, revision: str | None, *, what: str, allow_patterns: list[str] | None) -> Path:
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise HubError(f"{text} is a file; give the {what} folder or a Hub repo id.")
        return path.resolve()
    repo_type, repo_id = split_repo_id(text)
    if repo_id is None:
        raise HubError(f"{text} is neither an existing folder nor a Hugging Face repo id (USER/NAME).")
    offline = constants.is_offline_mode()
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                      local_files_only=offline, allow_patterns=allow_patterns))
    except LocalEntryNotFoundError:
        if offline:
            raise NotCachedError(
                f"{what} '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set; "
                "run once online or pass a local folder.") from None
        raise NotCachedError(
            f"could not reach the Hugging Face Hub to download {what} '{repo_id}', and it is not in the "
            "local cache; check the connection or pass a local folder.") from None
    except RevisionNotFoundError:
        raise HubError(f"{what} '{repo_id}' has no revision '{revision}' on the Hugging Face Hub.") from None
    except RepositoryNotFoundError:
        raise HubError(f"{what} '{repo_id}' was not found on the Hugging Face Hub (a private repo needs "
                       "HF_TOKEN or `hf auth login`).") from None
    except HfHubHTTPError as e:
        raise HubError(f"the Hugging Face Hub answered HTTP {_status(e)} for {what} '{repo_id}'.") from None


def split_repo_id(text: str) -> tuple[str, str | None]:
    """('model'|'dataset', repo id) for 'USER/NAME' or 'datasets/USER/NAME'; repo id None if malformed."""
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if text.startswith(prefix):
            repo_type, text = kind, text[len(prefix):]
    return repo_type, text if _REPO_ID.match(text) and ".." not in text else None


# --------------------------------------------------------------------------- publishing
def publish(checkpoint_dir: str | Path, repo_id: str, *, results: dict | str | Path | None = None,
            private: bool = False, revision: str | None = None, commit_message: str | None = None,
            dry_run_dir: str | Path | None = None, api: HfApi | None = None,
            dataset_name: str | None = None, recipe: str | None = None, license: str | None = None) -> str:
    """Upload a checkpoint with its results and generated model card; returns the commit URL or dry-run folder."""
    plan = plan_checkpoint(checkpoint_dir, repo_id, results=results, dataset_name=dataset_name, recipe=recipe,
                           license=license)
    if dry_run_dir is not None:
        return str(write_plan(plan, dry_run_dir))
    return push_plan(plan, repo_id, repo_type="model", private=private, revision=revision,
                     commit_message=commit_message or f"Upload dtrec checkpoint {Path(checkpoint_dir).name}",
                     api=api)


def publish_demo(demo_dir: str | Path, repo_id: str, *, repo_type: str = "model", private: bool = False,
                 revision: str | None = None, commit_message: str | None = None,
                 dry_run_dir: str | Path | None = None, api: HfApi | None = None) -> str:
    """Upload a demo folder as a model or dataset repo; returns the commit URL or dry-run folder."""
    if repo_type not in ("model", "dataset"):
        raise HubError(f"repo type must be 'model' or 'dataset', not {repo_type!r}.")
    plan = plan_demo(demo_dir, repo_id, repo_type=repo_type)
    if dry_run_dir is not None:
        return str(write_plan(plan, dry_run_dir))
    return push_plan(plan, repo_id, repo_type=repo_type, private=private, revision=revision,
                     commit_message=commit_message or "Upload dtrec demo folder", api=api)


def maybe_push(folder: str | Path, repo_id: str | None, *, private: bool = False, revision: str | None = None,
               commit_message: str | None = None, results: dict | str | Path | None = None) -> str | None:
    """Publish `folder` when `repo_id` is given (a demo folder or a checkpoint, told apart by layout)."""
    if not repo_id:
        return None
    folder = Path(folder)
    if (folder / "model" / "config.json").is_file():
        url = publish_demo(folder, repo_id, private=private, revision=revision, commit_message=commit_message)
    else:
        url = publish(folder, repo_id, results=results, private=private, revision=revision,
                      commit_message=commit_message)
    log.info("pushed %s to %s", folder, url)
    return url


# --------------------------------------------------------------------------- plans
Plan = dict[str, "Path | bytes"]


def plan_checkpoint(checkpoint_dir: str | Path, repo_id: str, *, results: dict | str | Path | None = None,
                    dataset_name: str | None = None, recipe: str | None = None,
                    license: str | None = None) -> Plan:
    """What a checkpoint publish uploads: weights, config, results, training config and model card.

    `license` None: the training data's terms for MovieLens / Amazon weights, else Apache-2.0
    (`dtrec.modelcard.default_license`)."""
    _check_repo_id(repo_id)
    ckpt = Path(checkpoint_dir)
    if not ckpt.is_dir():
        raise HubError(f"checkpoint folder {ckpt} does not exist.")
    with contextlib.suppress(FileNotFoundError):  # a training output folder: publish its best/ (else the check below)
        ckpt = checkpoint_folder(ckpt)
    for name in MODEL_FILES:
        if not (ckpt / name).is_file():
            raise HubError(f"{ckpt} holds no {name}; save the model with DualTower.save_pretrained first.")
    results_dict = _load_results_arg(results, ckpt)
    training = find_training_config(ckpt)
    dataset_name = dataset_name or _dataset_name(training[1] if training else {}, ckpt)
    card = make_model_card(ckpt, results_dict, dataset_name=dataset_name, recipe=recipe, repo_id=repo_id,
                           license=license)
    plan: Plan = {name: ckpt / name for name in MODEL_FILES}
    if results_dict is not None:
        plan["results.json"] = (json.dumps(results_dict, indent=2, sort_keys=True) + "\n").encode()
    if training is not None:
        plan[training[0].name] = training[0]
    plan["README.md"] = str(card).encode()
    return plan


def plan_demo(demo_dir: str | Path, repo_id: str, *, repo_type: str = "model") -> Plan:
    """What a demo publish uploads: the whole demo folder, with a card the repo type accepts."""
    _check_repo_id(repo_id)
    demo = Path(demo_dir)
    if not demo.is_dir():
        raise HubError(f"demo folder {demo} does not exist.")
    missing = [p for p in DEMO_REQUIRED if not (demo / p).is_file()]
    if missing:
        raise HubError(f"{demo} is not a dtrec demo folder (missing {', '.join(missing)}).")
    plan = plan_folder(demo)
    readme = plan.get("README.md")
    if readme is None:
        results = load_results(demo / "results.json") if (demo / "results.json").is_file() else None
        training = find_training_config(demo / "model")
        card = make_model_card(demo / "model", results, repo_id=repo_id,
                               dataset_name=_dataset_name(training[1] if training else {}, demo))
        plan["README.md"] = str(card).encode()
    if repo_type == "dataset":
        plan["README.md"] = _dataset_card(plan["README.md"], demo).encode()
    return plan


def plan_folder(folder: str | Path, prefix: str = "") -> Plan:
    """Every regular file under `folder` (no dotfiles, caches or temp files), keyed by `prefix` + its path."""
    folder = Path(folder)
    plan: Plan = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not path.is_symlink() and not _SKIP.search(rel) and not rel.endswith(".pyc"):
            plan[prefix + rel] = path
    return plan


def write_plan(plan: Plan, out_dir: str | Path) -> Path:
    """Write a plan to an empty or new folder (a dry run); returns the folder."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HubError(f"dry-run folder {out} is not empty; choose a new or empty folder.")
    for rel, src in plan.items():
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, dst)
        else:
            dst.write_bytes(src)
    log.info("dry run: wrote %d files to %s", len(plan), out)
    return out.resolve()


# --------------------------------------------------------------------------- upload
def push_plan(plan: Plan, repo_id: str, *, repo_type: str = "model", private: bool = False,
              revision: str | None = None, commit_message: str = "Upload with dtrec", api: HfApi | None = None,
              space_sdk: str | None = None) -> str:
    """Create the repo (and branch) if needed and upload `plan` as one commit; returns the commit URL."""
    _check_repo_id(repo_id)
    if constants.is_offline_mode():
        raise HubError("cannot publish while HF_HUB_OFFLINE=1 is set; unset it or use --dry-run DIR.")
    api = api or HfApi()
    if not (getattr(api, "token", None) or get_token()):
        raise HubError("no Hugging Face token found; set HF_TOKEN or run `hf auth login` (never pass it on "
                       "the command line).")
    step = "repo creation"
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=True if private else None, exist_ok=True,
                        space_sdk=space_sdk)
        if revision and revision != constants.DEFAULT_REVISION:
            step = f"creation of branch '{revision}'"
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        step = "commit"
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(src) if isinstance(src, Path) else src)
               for rel, src in sorted(plan.items())]
        with warnings.catch_warnings():
            # Demo folders hold items.parquet on purpose; the data-file warning does not apply.
            warnings.filterwarnings("ignore", message=".*data file.*")
            info = api.create_commit(repo_id, ops, commit_message=commit_message, repo_type=repo_type,
                                     revision=revision)
    except OfflineModeIsEnabled:
        raise HubError("cannot publish while HF_HUB_OFFLINE=1 is set; unset it or use --dry-run DIR.") from None
    except HfHubHTTPError as e:
        raise HubError(f"the Hugging Face Hub refused the {step} for '{repo_id}' (HTTP {_status(e)})"
                       f"{_server_reason(e)}.") from None
    log.info("published %d files to %s", len(ops), info.commit_url)
    return str(info.commit_url)


# --------------------------------------------------------------------------- helpers
def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise HubError(f"repo id {repo_id!r} is not of the form USER/NAME.")


def _load_results_arg(results: dict | str | Path | None, ckpt: Path) -> dict | None:
    if isinstance(results, dict):
        check_results(results)
        return results
    if results is not None:
        return load_results(results)
    for folder in (ckpt, ckpt.parent):
        if (folder / "results.json").is_file():
            return load_results(folder / "results.json")
    # A bare `dtrec finetune` run leaves valid.json / test.json beside best/: the model alone, no baselines.
    splits = {split: {k: v for k, v in json.loads((ckpt.parent / f"{split}.json").read_text()).items()
                      if k != "epoch"}
              for split in ("valid", "test") if (ckpt.parent / f"{split}.json").is_file()}
    if splits:
        results = {"dtrec": splits}
        check_results(results, str(ckpt.parent))
        return results
    return None


def _dataset_name(training: dict[str, Any], folder: Path) -> str:
    """The data set's name from the training config's data path, else a neutral name; a pretraining run's
    several sources joined with "+" (so the card's terms are those of the data, not `custom`)."""
    for key in ("dataset", "dataset_name", "data", "data_dir"):
        value = training.get(key)
        if isinstance(value, str) and value.strip():
            return Path(value.rstrip("/")).name
        if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
            return "+".join(Path(v.rstrip("/")).name for v in value)
    return "custom"


def _dataset_card(readme: Path | bytes, demo: Path) -> str:
    """The demo's card body under a dataset-card header (model-index is a model-repo field)."""
    text = readme.read_text() if isinstance(readme, Path) else readme.decode()
    card = ModelCard(text, ignore_metadata_errors=True)
    data = DatasetCardData(license="other", pretty_name=f"dtrec demo ({demo.name})",
                           tags=["recommendation", "dtrec", "demo"])
    return f"---\n{data.to_yaml()}\n---\n\n{card.text.lstrip()}"


def _status(e: HfHubHTTPError) -> str:
    response = getattr(e, "response", None)
    return str(getattr(response, "status_code", "?"))


def _server_reason(e: HfHubHTTPError) -> str:
    msg = (getattr(e, "server_message", None) or "").strip().splitlines()
    return f": {msg[0].rstrip('.')}" if msg else ""
