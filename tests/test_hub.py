"""Publishing to and loading from the Hugging Face Hub, offline: a local stand-in of the Hub's
HTTP API on 127.0.0.1 plays the Hub; the HF cache lives in tmp_path."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import DatasetCard, HfApi, ModelCard, SpaceCard, constants
from safetensors.torch import load_file, save_file

from dtrec.config import ModelConfig
from dtrec.features import Features
from dtrec.hub import (
    HubError,
    NotCachedError,
    maybe_push,
    publish,
    publish_demo,
    resolve_demo,
    resolve_model,
)
from dtrec.modelcard import init_data_sets, make_model_card
from dtrec.weights import shipped_checkpoint
from dtrec.results import METRIC_KEYS
from dtrec.model import DualTower

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_standin import StandInHub  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECRET = "hf_secretTOKEN0123456789abcdef"
N_ITEMS = 30


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finetune-like output folder: best/ checkpoint, results.json, train_config.json."""
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="tiny-clip", modality_dims={"text": 8, "image": 6}, d_model=16, n_layers=1,
                      n_heads=2, d_ff=32, max_len=5, dropout=0.1, emb_dropout=0.1)
    model = DualTower(cfg).eval()
    run = tmp_path / "run"
    model.save_pretrained(run / "best")
    gen = torch.Generator().manual_seed(1)

    def metrics() -> dict[str, float]:
        return {k: round(float(torch.rand(1, generator=gen)), 6) for k in METRIC_KEYS} | {"n": 100}

    results = {name: {"valid": metrics(), "test": metrics(), "cold_start": metrics()}
               for name in ("dtrec", "popularity", "sasrec")}
    (run / "results.json").write_text(json.dumps(results))
    (run / "train_config.json").write_text(json.dumps(
        {"config": {"epochs": 3, "lr": 1e-3}, "data": "data/movielens-100k", "encoder": "tiny-clip",
         "git_commit": "abc1234", "argv": ["dtrec", "finetune", "data/movielens-100k", "--out", "runs/ml"]}))
    return run


@pytest.fixture
def features() -> Features:
    """Random tiny-clip-shaped features with some missing modalities."""
    gen = torch.Generator().manual_seed(2)
    present = {"text": torch.rand(N_ITEMS, generator=gen) > 0.2, "image": torch.rand(N_ITEMS, generator=gen) > 0.3}
    present["text"] |= ~present["image"]  # every item has at least one modality
    values = {"text": torch.randn(N_ITEMS, 8, generator=gen), "image": torch.randn(N_ITEMS, 6, generator=gen)}
    values = {m: v * present[m][:, None] for m, v in values.items()}
    return Features("tiny-clip", values, present)


HISTORIES = [[0, 1, 2], [5], [3, 9, 12, 7, 4, 20, 21], [29, 0]]


def scores(model: DualTower, features: Features) -> torch.Tensor:
    """User x item scores, the serving computation."""
    model.eval()
    with torch.no_grad():
        return model.user_embeddings(HISTORIES, features) @ model.item_embeddings(features).T


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The stand-in Hub, online mode, HF_TOKEN=SECRET, and an empty HF cache and home in tmp_path."""
    with StandInHub() as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
        monkeypatch.setenv("HF_TOKEN", SECRET)
        yield server


def assert_no_secret(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    """The token appears in none of the texts and in no file under the folders."""
    for text in texts:
        assert SECRET not in text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------- model card
@pytest.mark.parametrize("name, release", [("movielens-1m", "1m"), ("ML-1M", "1m"), ("ml100k", "100k"),
                                           ("movielens-100k", "100k"), ("movielens-small", "100k"),
                                           ("scientific", None), ("mine", None)])
def test_the_movielens_release_is_read_from_the_data_sets_name(name, release):
    from dtrec.modelcard import default_license, movielens_release

    assert movielens_release(name) == release
    link = default_license(name)[2]
    if release is None:
        assert link is None or "grouplens" not in link
    else:
        assert link == f"https://files.grouplens.org/datasets/movielens/ml-{release}-README.txt"


def test_model_card_is_generated_from_checkpoint_and_results(run_dir: Path):
    results = json.loads((run_dir / "results.json").read_text())
    card = make_model_card(run_dir / "best", results, dataset_name="movielens-100k", repo_id="me/dtrec-ml")
    parsed = ModelCard(str(card))  # what the Hub parses
    data = parsed.data
    assert data.library_name == "dtrec"
    assert data.pipeline_tag == "feature-extraction"
    assert {"recommendation", "sequential-recommendation", "multimodal", "two-tower"} <= set(data.tags)
    assert data.datasets == ["movielens-100k"]
    # weights trained on MovieLens carry its research-use terms, not the code's Apache-2.0
    assert data.license == "other" and data.license_name and data.license_link.endswith("ml-100k-README.txt")
    assert "research use under its terms" in parsed.text
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    want = {(split, k): results["dtrec"][split][k] for split in ("test", "cold_start") for k in METRIC_KEYS}
    assert got == want  # model-index holds the published model's metrics only, exactly
    text = parsed.text
    cfg = json.loads((run_dir / "best" / "config.json").read_text())
    assert f"`{cfg['encoder']}`" in text and "| text | 8 |" in text and "| image | 6 |" in text
    assert "dtrec finetune data/movielens-100k --out runs/ml" in text  # recipe from the run record
    assert "abc1234" in text and '"lr": 0.001' in text
    for name in ("popularity", "sasrec"):  # baselines of the same run in the tables
        assert f"| {name} (n=100) | {results[name]['test']['recall@10']:.4f} |" in text
    assert "GroupLens" in text  # data notice
    assert 'DualTower.from_pretrained("me/dtrec-ml")' in text and "Recommender.from_folder" in text
    assert "was fine-tuned from" not in text  # trained from scratch: its cold-start items are unseen


def test_the_card_of_a_fine_tuned_model_says_its_cold_start_items_may_be_in_the_inits_data(run_dir: Path,
                                                                                          tmp_path: Path):
    record = json.loads((run_dir / "train_config.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())

    def cold_section(init: str) -> str:
        (run_dir / "train_config.json").write_text(json.dumps({**record, "init": init}))
        text = str(make_model_card(run_dir / "best", results, dataset_name="movielens-100k", repo_id="me/x"))
        return text[text.index("### Cold-start items"):text.index("### Validation")]

    cold = cold_section("/runs/gone")  # an init that is not here: the card cannot name its data
    assert "fine-tuned from `/runs/gone`. Items that checkpoint was trained on" in cold
    assert "| **dtrec** (n=100) |" in cold
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "train_config.json").write_text(json.dumps({"data": ["/d/amazon-toys", "/d/movielens-1m"]}))
    assert "which was trained on amazon-toys, movielens-1m, each data set's cold-start items left out" in \
        cold_section(str(pre))
    # The shipped init, recorded relative to where the run started, is found inside the package.
    assert init_data_sets("dtrec/weights/pretrained") == sorted(
        json.loads((shipped_checkpoint("pretrained") / "train_config.json").read_text())["sources"])
    shipped = cold_section("/old/checkout/dtrec/weights/pretrained")
    assert "which was trained on Scientific, amazon2014-beauty" in shipped
    assert "fine-tuned from `dtrec/weights/pretrained`" in shipped and "/old/checkout" not in shipped
    assert init_data_sets("runs/pretrained") is None  # another folder of that name, gone: not the shipped one


def test_model_card_without_results_has_no_model_index(run_dir: Path):
    card = ModelCard(str(make_model_card(run_dir / "best", None, dataset_name="custom")))
    assert not card.data.eval_results
    assert "No evaluation results" in card.text
    assert card.data.license == "apache-2.0" and card.data.license_link is None  # your own data: the code's licence
    mine = ModelCard(str(make_model_card(run_dir / "best", None, dataset_name="movielens-100k", license="mit")))
    assert mine.data.license == "mit" and "Licence: `mit`" in mine.text


def test_bad_results_fail_in_one_sentence(run_dir: Path, tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dtrec": {"test": {"recall@10": "high"}}}))
    with pytest.raises(ValueError, match="must map metric names to numbers"):
        publish(run_dir / "best", "me/x", results=bad, dry_run_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- dry run + local round trip
def test_dry_run_folder_round_trip_gives_identical_scores(run_dir: Path, features: Features, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    from dtrec.cli import main

    out = tmp_path / "dry"
    assert main(["publish", str(run_dir / "best"), "--repo-id", "me/dtrec-ml", "--dry-run", str(out)]) == 0
    printed = capsys.readouterr()
    assert str(out) in printed.out
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {"config.json", "model.safetensors", "results.json", "train_config.json", "README.md"}
    assert (out / "model.safetensors").read_bytes() == (run_dir / "best" / "model.safetensors").read_bytes()
    assert json.loads((out / "results.json").read_text()) == json.loads((run_dir / "results.json").read_text())
    assert_no_secret(printed.out, printed.err, folders=(out,))

    original = DualTower.from_pretrained(str(run_dir / "best"))
    loaded = DualTower.from_pretrained(str(resolve_model(out)))
    assert original.state_dict().keys() == loaded.state_dict().keys()
    assert torch.equal(scores(original, features), scores(loaded, features))

    # The strict key check holds on the published folder: an extra tensor is refused.
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "config.json").write_bytes((out / "config.json").read_bytes())
    state = load_file(str(out / "model.safetensors"))
    save_file({**state, "stray.weight": torch.zeros(1)}, str(tampered / "model.safetensors"))
    with pytest.raises(Exception, match="stray"):
        DualTower.from_pretrained(str(tampered))


def test_finetune_output_folder_publishes_best_with_its_valid_and_test(run_dir: Path, tmp_path: Path):
    (run_dir / "results.json").unlink()
    test = {"epoch": 4, "recall@10": 0.25, "recall@50": 0.5, "ndcg@10": 0.125, "ndcg@50": 0.2, "mrr": 0.1, "n": 9}
    (run_dir / "test.json").write_text(json.dumps(test))
    (run_dir / "valid.json").write_text(json.dumps({**test, "recall@10": 0.3}))
    out = Path(publish(run_dir, "me/x", dry_run_dir=tmp_path / "o"))  # the run folder, not best/
    assert (out / "model.safetensors").read_bytes() == (run_dir / "best" / "model.safetensors").read_bytes()
    assert json.loads((out / "results.json").read_text())["dtrec"]["test"]["recall@10"] == 0.25
    card = ModelCard((out / "README.md").read_text())
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results} == {
        ("test", k): test[k] for k in METRIC_KEYS}


def test_a_pretraining_run_of_several_sources_is_published_under_their_names_and_terms(run_dir: Path,
                                                                                       tmp_path: Path):
    record = json.loads((run_dir / "train_config.json").read_text())
    (run_dir / "train_config.json").write_text(json.dumps(
        record | {"data": ["data/domains/amazon2014-beauty", "data/domains/food/", "data/domains/scientific"]}))
    card = ModelCard((Path(publish(run_dir, "me/x", dry_run_dir=tmp_path / "o")) / "README.md").read_text())
    assert card.data.datasets == ["amazon2014-beauty+food+scientific"]
    # Amazon's research-use terms, not the `custom` data's apache-2.0 a list used to fall back to
    assert card.data.license == "other" and card.data.license_name == "amazon-reviews-research-terms"


def test_dry_run_refuses_a_non_empty_folder(run_dir: Path, tmp_path: Path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(HubError, match="not empty"):
        publish(run_dir / "best", "me/x", dry_run_dir=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "../x", ""])
def test_bad_repo_id_is_refused(run_dir: Path, tmp_path: Path, repo_id: str):
    with pytest.raises(HubError, match="USER/NAME"):
        publish(run_dir / "best", repo_id, dry_run_dir=tmp_path / "o")


def test_cli_has_no_token_option():
    from dtrec.cli import build_parser

    parser = build_parser()
    for argv in (["publish", "c", "--repo-id", "a/b", "--token", "x"],
                 ["publish-demo", "d", "--repo-id", "a/b", "--token", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


# --------------------------------------------------------------------------- publishing to the stand-in Hub
def test_publish_end_to_end_then_load_offline(run_dir: Path, features: Features, hub: StandInHub,
                                              tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                              capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    caplog.set_level(logging.DEBUG)
    dry = Path(publish(run_dir / "best", "me/dtrec-ml", dry_run_dir=tmp_path / "dry"))
    url = publish(run_dir / "best", "me/dtrec-ml", revision="dev", commit_message="first weights",
                  api=HfApi(endpoint=hub.url))
    sha = url.rsplit("/", 1)[1]
    assert url == f"{hub.url}/me/dtrec-ml/commit/{sha}"
    repo = hub.repos[("model", "me/dtrec-ml")]
    assert repo.branches["dev"] == sha and repo.messages[sha] == "first weights"
    assert hub.files("me/dtrec-ml", "main") == {}  # the branch was created; main untouched
    uploaded = hub.files("me/dtrec-ml", "dev")
    assert uploaded == {p.name: p.read_bytes() for p in dry.iterdir()}  # exactly the dry-run folder
    # The token, found by huggingface_hub in HF_TOKEN, authenticates every repo request.
    repo_auth = {auth for (_, path), auth in zip(hub.requests, hub.auth) if "/me/dtrec-ml" in path or "repos" in path}
    assert repo_auth == {f"Bearer {SECRET}"}
    assert ("POST", "/api/models/me/dtrec-ml/branch/dev") in hub.requests

    # A second publish to the existing repo and branch works (create_repo / create_branch exist_ok).
    publish(run_dir / "best", "me/dtrec-ml", revision="dev", api=HfApi(endpoint=hub.url))

    folder = resolve_model("me/dtrec-ml", revision="dev")  # snapshot_download from the stand-in
    original = DualTower.from_pretrained(str(run_dir / "best"))
    want = scores(original, features)
    assert torch.equal(scores(DualTower.from_pretrained(str(folder)), features), want)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n_requests = len(hub.requests)
    assert resolve_model("me/dtrec-ml", revision="dev") == folder  # cached repo loads offline
    assert torch.equal(scores(DualTower.from_pretrained(str(folder)), features), want)
    assert len(hub.requests) == n_requests  # ... without touching the network
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1"):
        publish(run_dir / "best", "me/dtrec-ml")

    printed = capsys.readouterr()
    assert_no_secret(caplog.text, printed.out, printed.err,
                     folders=(tmp_path / "dry", tmp_path / "hf-cache", run_dir))


def test_publish_without_token_fails_clearly(run_dir: Path, hub: StandInHub, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(HubError, match="no Hugging Face token found; set HF_TOKEN"):
        publish(run_dir / "best", "me/x", api=HfApi(endpoint=hub.url))
    assert hub.requests == []


def test_cli_publish_subprocess_never_prints_the_token(run_dir: Path, hub: StandInHub, tmp_path: Path):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "home"), "HF_HUB_VERBOSITY": "debug", "PYTHONPATH": str(REPO)}
    env.pop("TRANSFORMERS_OFFLINE", None)
    r = subprocess.run([sys.executable, "-m", "dtrec.cli", "publish", str(run_dir / "best"), "--repo-id",
                        "me/from-cli", "--commit-message", "via cli", "--private"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"published: {hub.url}/me/from-cli/commit/")
    assert hub.repos[("model", "me/from-cli")].private
    assert set(hub.files("me/from-cli")) == {"config.json", "model.safetensors", "results.json",
                                             "train_config.json", "README.md"}
    assert_no_secret(r.stdout, r.stderr, folders=(tmp_path / "home",))
    assert SECRET.encode() not in b"".join(hub.bodies)  # nor in anything uploaded

    # A refused request is one line on stderr, exit 2.
    env["HF_ENDPOINT"] = hub.url + "/nothing-here"
    env.pop("HF_HUB_VERBOSITY")
    r = subprocess.run([sys.executable, "-m", "dtrec.cli", "publish", str(run_dir / "best"), "--repo-id", "me/y"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "refused" in r.stderr and SECRET not in r.stderr


# --------------------------------------------------------------------------- loading offline
def test_offline_uncached_repo_fails_in_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(NotCachedError) as err:
        resolve_model("user/name")
    assert str(err.value) == ("model 'user/name' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                              "is set; run once online or pass a local folder.")
    assert isinstance(err.value, ValueError)
    with pytest.raises(NotCachedError, match="^demo 'user/demo' is not in the local"):
        resolve_demo("datasets/user/demo")


def test_offline_loads_a_hand_written_cache_snapshot(run_dir: Path, features: Features, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--someone--tiny" / "snapshots" / sha
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snap / name).write_bytes((run_dir / "best" / name).read_bytes())
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    folder = resolve_model("someone/tiny")
    assert folder == snap
    original = DualTower.from_pretrained(str(run_dir / "best"))
    assert torch.equal(scores(DualTower.from_pretrained(str(folder)), features), scores(original, features))


def test_local_paths_and_malformed_names(run_dir: Path, tmp_path: Path):
    assert resolve_model(run_dir / "best") == (run_dir / "best").resolve()
    with pytest.raises(HubError, match="neither an existing folder nor a Hugging Face repo id"):
        resolve_model(str(tmp_path / "missing" / "deep" / "path"))
    with pytest.raises(HubError, match="is a file"):
        resolve_model(run_dir / "results.json")
    with pytest.raises(HubError, match="holds no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(HubError, match="not a dtrec demo folder"):
        resolve_demo(run_dir)


# --------------------------------------------------------------------------- demo folders
def make_demo(run_dir: Path, root: Path) -> Path:
    """A minimal demo folder in the layout of docs: model/, catalog/, results.json, histories.json."""
    demo = root / "demo"
    (demo / "model").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (demo / "model" / name).write_bytes((run_dir / "best" / name).read_bytes())
    (demo / "catalog" / "images").mkdir(parents=True)
    (demo / "catalog" / "items.parquet").write_bytes(b"PAR1 stand-in")
    (demo / "catalog" / "images" / "1.jpg").write_bytes(b"\xff\xd8 jpeg")
    (demo / "results.json").write_text((run_dir / "results.json").read_text())
    (demo / "histories.json").write_text(json.dumps([["1", "2"]]))
    (demo / "NOTICE.md").write_text("Data notice: test fixture.")
    (demo / "catalog" / "__pycache__").mkdir()
    (demo / "catalog" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    return demo


def test_publish_demo_dry_run_and_dataset_card(run_dir: Path, tmp_path: Path):
    demo = make_demo(run_dir, tmp_path)
    out = Path(publish_demo(demo, "me/demo", dry_run_dir=tmp_path / "dry-model"))
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {"model/config.json", "model/model.safetensors", "catalog/items.parquet",
                     "catalog/images/1.jpg", "results.json", "histories.json", "NOTICE.md", "README.md"}
    card = ModelCard((out / "README.md").read_text())  # generated: the demo had no README
    assert card.data.library_name == "dtrec" and card.data.eval_results
    assert "Data notice: test fixture." in card.text
    out = Path(publish_demo(demo, "me/demo", repo_type="dataset", dry_run_dir=tmp_path / "dry-data"))
    dcard = DatasetCard((out / "README.md").read_text())
    assert "model-index" not in dcard.content and "dtrec" in dcard.data.tags
    assert resolve_demo(out) == out.resolve()


def test_publish_demo_to_dataset_repo_and_resolve(run_dir: Path, hub: StandInHub, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    demo = make_demo(run_dir, tmp_path)
    url = publish_demo(demo, "me/demo-data", repo_type="dataset", api=HfApi(endpoint=hub.url))
    assert url.startswith(f"{hub.url}/datasets/me/demo-data/commit/")
    folder = resolve_demo("datasets/me/demo-data")
    assert (folder / "catalog" / "items.parquet").read_bytes() == b"PAR1 stand-in"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_demo("datasets/me/demo-data") == folder
    with pytest.raises(NotCachedError):
        resolve_demo("me/demo-data")  # the model repo of that name was never fetched


def test_maybe_push(run_dir: Path, hub: StandInHub, tmp_path: Path):
    assert maybe_push(run_dir / "best", None) is None
    assert hub.requests == []
    url = maybe_push(run_dir / "best", "me/pushed")  # a checkpoint: publish
    assert url.startswith(f"{hub.url}/me/pushed/commit/") and "README.md" in hub.files("me/pushed")
    url = maybe_push(make_demo(run_dir, tmp_path), "me/pushed-demo")  # a demo folder: publish_demo
    assert "catalog/items.parquet" in hub.files("me/pushed-demo")


def test_push_to_hub_flag_publishes_after_success_only(run_dir: Path, hub: StandInHub,
                                                       capsys: pytest.CaptureFixture):
    import argparse

    from dtrec.cli import _push_after, build_parser

    args = build_parser().parse_args(["finetune", "--data", "d", "--encoder", "tiny-clip", "--out", str(run_dir),
                                      "--push-to-hub", "me/trained", "--hub-private"])
    assert _push_after(args, 1, args.out) == 1 and ("model", "me/trained") not in hub.repos  # failed run
    assert _push_after(args, 0, args.out) == 0
    assert hub.repos[("model", "me/trained")].private
    assert "model.safetensors" in hub.files("me/trained")
    assert capsys.readouterr().out.startswith(f"published: {hub.url}/me/trained/commit/")
    assert _push_after(argparse.Namespace(push_to_hub=None, hub_private=False), 0, str(run_dir)) == 0


# --------------------------------------------------------------------------- the Space
def test_space_script_dry_run(run_dir: Path, tmp_path: Path):
    demo = make_demo(run_dir, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    out = tmp_path / "space"
    r = subprocess.run(["bash", str(REPO / "scripts" / "space.sh"), "me/dtrec-space", "--assets", str(demo),
                        "--model", "me/dtrec-ml", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and str(out) in r.stdout and "DTREC_MODEL=me/dtrec-ml" in r.stdout
    card = SpaceCard((out / "README.md").read_text())
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.python_version == "3.11" and "python_version: '3.11'" in card.content
    assert card.data.models == ["me/dtrec-ml"]
    assert (out / "app.py").read_bytes() == (REPO / "app.py").read_bytes()
    assert (out / "dtrec" / "hub.py").is_file() and not list(out.rglob("__pycache__"))
    assert (out / "assets" / "demo" / "model" / "model.safetensors").is_file()
    reqs = (out / "requirements.txt").read_text()
    assert "torch" in reqs and "gradio" not in reqs.lower()
    assert card.data.license == "apache-2.0"  # the fixture's data is not MovieLens or Amazon


def test_space_header_licence_follows_the_bundled_demo(run_dir: Path, tmp_path: Path):
    """A demo built from MovieLens ships research-use data: the Space says `license: other` and links the terms."""
    demo = make_demo(run_dir, tmp_path)
    card = make_model_card(demo / "model", json.loads((run_dir / "results.json").read_text()),
                           dataset_name="movielens-100k")
    (demo / "README.md").write_text(str(card))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    out = tmp_path / "space"
    r = subprocess.run(["bash", str(REPO / "scripts" / "space.sh"), "me/dtrec-space", "--assets", str(demo),
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    space = SpaceCard(text)
    assert space.data.license == "other" and space.data.license_name == "movielens-research-terms"
    assert space.data.license_link.startswith("https://files.grouplens.org/")
    assert "NOTICE.md" in space.text
    assert not (REPO / "README.md").read_text().startswith("---")  # the header lives only in the Space



def test_model_card_takes_a_recipe_results_file_with_its_provenance(run_dir: Path):
    """A recipe's results.json carries a "meta" entry: the card names the recipe and commit, tables skip it."""
    results = json.loads((run_dir / "results.json").read_text())
    results["meta"] = {"recipe": "movielens", "commit": "def5678", "commands": ["dtrec prepare movielens"]}
    card = make_model_card(run_dir / "best", results, dataset_name="movielens-100k")
    parsed = ModelCard(str(card))
    assert "bash scripts/movielens.sh OUTDIR" in parsed.text and "def5678" in parsed.text
    assert "meta" not in {r.dataset_split for r in parsed.data.eval_results}
    assert "| meta" not in parsed.text
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    assert got == {(split, k): results["dtrec"][split][k] for split in ("test", "cold_start") for k in METRIC_KEYS}
