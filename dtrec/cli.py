"""The `dtrec` command line: one sub-command per pipeline stage.

Each handler imports its library module when it runs: those modules import torch,
pandas, FAISS or huggingface_hub (seconds), which `dtrec --help` and `dtrec info`
need not wait for. Only light modules (configs, results, the version) are imported
at the top. Handlers hold argument plumbing only, no logic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

from dtrec import __version__
from dtrec.config import DEFAULT_TIES, INDEX_KINDS, TIES, FinetuneConfig, ModelConfig, PretrainConfig
from dtrec.data.registry import PrepareOptions, get_reader, list_readers
from dtrec.results import metric_table
from dtrec.weights import default_init, resolve_checkpoint, resolve_init


class CLIError(Exception):
    """An error reported to the user as one line, without a traceback."""


class _Commands(argparse._SubParsersAction):
    """Sub-commands, some of whose parsers are completed only when chosen (`complete[name](parser)`): `prepare`
    and `baseline` list the registered readers and baselines, whose modules import pandas and torch, which
    `dtrec --help` need not wait for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.complete: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        fill = self.complete.pop(values[0], None) if values else None
        if fill is not None:
            fill(self._name_parser_map[values[0]])
        super().__call__(parser, namespace, values, option_string)


# --------------------------------------------------------------------------- config flags
# One `--field-name` flag per field of a training config. Precedence, lowest first: dataclass
# defaults, a base config (the saved one on `--resume`), `--config FILE`, then explicit flags.
# Model fields live under the config's `model` key; `encoder` and `modality_dims` always come
# from the features.
T = TypeVar("T")
_FROM_FEATURES = ("encoder", "modality_dims", "id_rows")  # set from the features, not by flags


def _flag_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, _flag_type(hints[f.name])) for f in dataclasses.fields(cls)]


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` flag per field of `cls` and of its ModelConfig (default: not given)."""
    groups = [(cls, f"{cls.__name__} fields"), (ModelConfig, "model fields")]
    for c, title in groups:
        g = parser.add_argument_group(title)
        for name, tp in _fields(c):
            if name == "model" or (c is ModelConfig and name in _FROM_FEATURES):
                continue
            flag = "--" + name.replace("_", "-")
            if tp is bool:
                g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
            elif tp in (int, float, str):
                g.add_argument(flag, dest=name, type=tp, default=None)


def resolve_config(cls: type[T], args: argparse.Namespace, base: dict | None = None) -> T:
    """Build `cls` from `base`, then `args.config` (a JSON file), then explicit flags."""
    data: dict[str, Any] = json.loads(json.dumps(base or {}))
    data.setdefault("model", {})
    if getattr(args, "config", None):
        file_data = json.loads(Path(args.config).read_text())
        data["model"].update(file_data.pop("model", {}) or {})
        data.update(file_data)
    train_names = {n for n, _ in _fields(cls)} - {"model"}
    model_names = {n for n, _ in _fields(ModelConfig)} - set(_FROM_FEATURES)
    for name in train_names | model_names:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in train_names:
            data[name] = value
        else:
            data["model"][name] = value
    unknown = sorted(set(data) - train_names - {"model"})
    unknown += sorted(f"model.{k}" for k in set(data["model"]) - model_names - set(_FROM_FEATURES))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**data)


# --------------------------------------------------------------------------- prepare / info
def add_option_flags(parser: argparse.ArgumentParser, cls: type, names: list[str]) -> None:
    """One `--field-name` flag per named field of the dataclass `cls`: its type, its default (none: required) and
    the `metadata["help"]` of the field (or of the field it overrides)."""
    hints = dict(_fields(cls))
    for f in [f for name in names for f in dataclasses.fields(cls) if f.name == name]:
        helps = [c.__dataclass_fields__[f.name].metadata.get("help") for c in cls.__mro__
                 if f.name in getattr(c, "__dataclass_fields__", {})]
        kw: dict[str, Any] = {"dest": f.name, "help": next((h for h in helps if h), None)}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if hints[f.name] is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = hints[f.name]
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="read a raw data set and write the prepared format")
    p.set_defaults(func=_cmd_prepare)
    sub.complete["prepare"] = _add_reader_commands

    i = sub.add_parser("info", help="counts of a prepared data set")
    i.add_argument("data", help="prepared data folder")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_cmd_info)


def _add_reader_commands(p: argparse.ArgumentParser) -> None:
    """`dtrec prepare <kind>`, one per registered reader: its own options' flags, `--out`, then the common ones."""
    import dtrec.data.prepare  # noqa: F401  the built-in readers register themselves on this import

    psub = p.add_subparsers(dest="source_kind", required=True)
    common = [f.name for f in dataclasses.fields(PrepareOptions)]
    for reader in list_readers():
        r = psub.add_parser(reader.name, help=reader.help)
        add_option_flags(r, reader.options, [f.name for f in dataclasses.fields(reader.options)
                                             if f.name not in common])
        r.add_argument("--out", required=True, help="output folder")
        add_option_flags(r, reader.options, common)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from dtrec.data.prepare import prepare, summary

    reader = get_reader(args.source_kind)
    options = reader.options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(reader.options)})
    out = Path(args.out)
    ds = prepare(reader.name, out, options)
    print(summary(ds, out))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from dtrec.data.catalog import Dataset

    counts = Dataset.load(args.data).counts()
    if args.json:
        print(json.dumps(counts))
    else:
        for k, v in counts.items():
            print(f"{k:>18}: {v}")
    return 0


# --------------------------------------------------------------------------- extract
def _add_extract_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="encode every item with a frozen encoder (cached per encoder)")
    p.add_argument("data", help="prepared data folder")
    p.add_argument("--encoder", default="offline", help="offline | clip:<model>[:<tag or file>] | tiny-clip")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="recompute even when the cache is valid")
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args: argparse.Namespace) -> int:
    from dtrec.data.catalog import Dataset
    from dtrec.features import extract

    dataset = Dataset.load(args.data)
    stats: dict = {}
    t0 = time.perf_counter()
    try:
        feats = extract(dataset, args.encoder, batch_size=args.batch_size, device=args.device, force=args.force,
                        stats=stats)
    except KeyboardInterrupt:
        if "interrupted_at" not in stats:
            raise
        print(f"interrupted after {stats['interrupted_at']:,} of {len(dataset.catalog):,} items; "
              f"run the same command again to resume there", file=sys.stderr)
        return 130
    total = time.perf_counter() - t0
    counts = ", ".join(f"{int(feats.present[m].sum())} with {m}" for m in feats.modalities)
    if stats["cached"]:
        print(f"{len(feats)} items ({counts}): features are up to date in {stats['path']} (--force recomputes)")
        return 0
    rate = stats["encoded"] / stats["encode_s"] if stats["encode_s"] > 0 else float("inf")
    print(f"{len(feats)} items ({counts}) encoded with {feats.encoder} in {stats['encode_s']:.1f} s "
          f"({rate:.1f} items/s; text {stats['text_s']:.1f} s, images {stats['image_s']:.1f} s, "
          f"model load {stats['load_s']:.1f} s, total {total:.1f} s)")
    print(f"features: {stats['path']}")
    return 0


# --------------------------------------------------------------------------- evaluate / baseline
def _add_eval_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="full-ranking metrics of a dtrec or baseline checkpoint")
    e.add_argument("--checkpoint", required=True,
                   help="checkpoint folder (or a training folder holding best/), or `pretrained`: the shipped model")
    e.add_argument("--data", required=True, help="prepared data folder")
    e.add_argument("--encoder", default=None, help="feature encoder (default: the checkpoint's)")
    e.add_argument("--batch-size", type=int, default=256, help="users scored at a time")
    e.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    e.add_argument("--exclude-history", action="store_true",
                   help="hide each user's history items from the ranking (the serving protocol; default: "
                        "nothing hidden, the reference protocol of published results)")
    e.add_argument("--ties", choices=TIES, default=DEFAULT_TIES,
                   help="a target tied with other items gets the expected credit of a random tie-break "
                        "(default) or ranks below them all (pessimistic)")
    e.add_argument("--standard-error", action="store_true",
                   help="also each metric's standard error over the split's users (the test-set noise of one run)")
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.add_argument("--quiet", action="store_true", help="no progress bar (default: one on stderr when a terminal)")
    e.set_defaults(func=_cmd_evaluate)

    a = sub.add_parser("adapt", help="refit an adaptor checkpoint's feature standardisation on a new catalog's "
                                     "items and/or scale its content term (zero-shot, no interactions read) and "
                                     "save the result as a checkpoint")
    a.add_argument("--checkpoint", required=True, help="adaptor checkpoint folder, or `pretrained`: the shipped model")
    a.add_argument("--data", required=True, help="prepared data (or catalog-only) folder with extracted features")
    a.add_argument("--out", required=True,
                   help="checkpoint folder to write (config.json, model.safetensors, adapt.json)")
    a.add_argument("--encoder", default=None, help="feature encoder (default: the checkpoint's)")
    a.add_argument("--content-scale", type=float, default=None, metavar="FACTOR",
                   help="multiply the content term's weights by FACTOR (3 for the shipped model on a catalog it "
                        "never saw: docs/pretraining.md)")
    a.add_argument("--keep-norm", action="store_true",
                   help="keep the checkpoint's feature standardisation (only scale the content term)")
    a.set_defaults(func=_cmd_adapt)

    b = sub.add_parser("baseline", help="fit a baseline (popularity | sasrec | content-knn) and save it")
    b.set_defaults(func=_cmd_baseline)
    sub.complete["baseline"] = _add_baseline_flags


def _add_baseline_flags(b: argparse.ArgumentParser) -> None:
    """`dtrec baseline KIND`: KIND one of the registered baselines (importing them imports torch)."""
    from dtrec.baselines import list_baselines

    b.add_argument("kind", choices=[baseline.name for baseline in list_baselines()])
    b.add_argument("--data", required=True, help="prepared data folder")
    b.add_argument("--out", required=True, help="checkpoint folder to write (gets valid.json too)")
    b.add_argument("--seed", type=int, default=None)
    b.add_argument("--epochs", type=int, default=None, help="sasrec: most epochs (early stopping on valid NDCG@10)")
    b.add_argument("--patience", type=int, default=None, help="sasrec: epochs without improvement before stopping")
    b.add_argument("--lr", type=float, default=None)
    b.add_argument("--batch-size", type=int, default=None)
    b.add_argument("--hidden", type=int, default=None)
    b.add_argument("--n-layers", type=int, default=None)
    b.add_argument("--n-heads", type=int, default=None)
    b.add_argument("--d-ff", type=int, default=None)
    b.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None,
                   help="sasrec: batches of similar history length (default: on, as dtrec fine-tuning)")
    b.add_argument("--pad-multiple", type=int, default=None,
                   help="sasrec: round batch widths up to a multiple (default 1; fewer shapes on a GPU)")
    b.add_argument("--prefixes", action=argparse.BooleanOptionalAction, default=None,
                   help="sasrec: train as RecBole does, one example per prefix with its loss at the last position "
                        "(default: causal windows, every position predicting)")
    b.add_argument("--positions", choices=("end", "start"), default=None,
                   help="sasrec: position 0 at the newest item (end, default) or, as RecBole, at the oldest (start)")
    b.add_argument("--dropout", type=float, default=None)
    b.add_argument("--attn-dropout", type=float, default=None)
    b.add_argument("--max-len", type=int, default=None)
    b.add_argument("--repeat-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="sasrec: add dtrec's learned repeat term for history items (docs/model.md; default off)")
    b.add_argument("--resume", action="store_true", default=None,
                   help="sasrec: continue the run in --out from its last epoch (OUT/last/), with the same settings")
    b.add_argument("--device", default=None)
    b.add_argument("--encoder", default=None, help="content-knn: the features to rank by (e.g. offline)")
    b.add_argument("--query", choices=("last", "mean"), default=None,
                   help="content-knn: the last history item (default) or the mean of the history")


def _json_safe(obj):
    """NaN (an empty case set) becomes null so the output stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dtrec.scoring import evaluate_checkpoint

    res = evaluate_checkpoint(resolve_checkpoint(args.checkpoint), args.data, encoder=args.encoder,
                              batch_size=args.batch_size, device=args.device, progress=False if args.quiet else None,
                              exclude_history=args.exclude_history, ties=args.ties,
                              standard_error=args.standard_error)
    protocol = "serving (history hidden)" if args.exclude_history else "reference (nothing hidden)"
    if args.json:
        print(json.dumps(_json_safe(res), allow_nan=False))
    else:
        print(f"protocol: {protocol}, ties {args.ties}")
        for split, m in res.items():
            se = m.get("se", {})
            nums = "  ".join(f"{k} {v:.4f}" + (f" ± {se[k]:.4f}" if k in se else "")
                             for k, v in m.items() if isinstance(v, float))
            print(f"{split:>10} (n={m['n']}, {m['n_tied']} tied): {nums}"
                  + (f"  [{m['note']}]" if "note" in m else ""))
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from dtrec.train.adapt import adapt_checkpoint

    record = adapt_checkpoint(resolve_checkpoint(args.checkpoint), args.data, args.out, encoder=args.encoder,
                              refit_norm=not args.keep_norm, content_scale=args.content_scale)
    done = []
    if record["norm_refitted"]:
        done.append("standardisation refitted on " + ", ".join(f"{n:,} with {m}"
                                                              for m, n in record["items_fitted"].items()))
    if record["content_scale"] is not None:
        weights = ", ".join(f"{w:.3f}" for w in record["content_weights"]["after"])
        done.append(f"content term x{record['content_scale']:g} (weights {weights})")
    print(f"{'; '.join(done)}; checkpoint: {args.out}")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from dtrec.baselines import get_baseline, list_baselines, train_baseline

    opts = {k: getattr(args, k) for k in ("seed", "epochs", "patience", "lr", "batch_size", "hidden", "n_layers",
                                          "n_heads", "d_ff", "dropout", "attn_dropout", "max_len", "repeat_bias",
                                          "group_by_length", "pad_multiple", "prefixes", "positions", "resume", "device",
                                          "encoder", "query")}
    flags = get_baseline(args.kind).flags
    if args.resume and (flags is None or "resume" not in flags):  # ignoring it would silently start afresh
        resumable = [b.name for b in list_baselines() if "resume" in (b.flags or ())]
        raise ValueError(f"the {args.kind} baseline has no training to resume (--resume applies to "
                         f"{', '.join(resumable)})")
    if flags is not None:  # a kind that takes few of these flags ignores the others
        opts = {k: v for k, v in opts.items() if k in flags}
    valid = train_baseline(args.kind, args.data, args.out, **opts)
    print(json.dumps(_json_safe(valid)))
    return 0


# --------------------------------------------------------------------------- pretrain / finetune
def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised multi-modal pretraining over items, and with --sequences "
                                        "over the histories of every --data too (torchrun-aware)")
    p.add_argument("--data", action="append",
                   help="prepared data folder (repeat for several; with --resume: the run's own by default)")
    p.add_argument("--encoder", help="feature encoder whose cached features to read (with --resume: the run's)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--init", default=None, help="start from this checkpoint (--sequences only)")
    p.add_argument("--config", default=None, help="JSON file of PretrainConfig fields (model fields under 'model')")
    p.add_argument("--resume", action="store_true", help="continue OUT/last with OUT's saved config (--sequences)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(p, PretrainConfig)
    _add_push_flag(p)
    p.set_defaults(func=_cmd_pretrain)

    f = sub.add_parser("finetune", help="train the two towers on next-item prediction (torchrun-aware)")
    f.add_argument("--data", help="prepared data folder (with --resume: the run's own by default)")
    f.add_argument("--encoder", help="feature encoder whose cached features to read (with --resume: the run's)")
    f.add_argument("--out", required=True, help="output folder: best/, last/, metrics.jsonl, valid.json")
    f.add_argument("--init", default=None,
                   help="start from this checkpoint (a `dtrec pretrain` output, or `pretrained`: the shipped "
                        "multi-domain model), or `none`: from scratch; default: `pretrained` on offline features "
                        "(its architecture and settings, flags given winning), else from scratch")
    f.add_argument("--config", default=None, help="JSON file of FinetuneConfig fields (model fields under 'model')")
    f.add_argument("--resume", action="store_true", help="continue OUT/last with OUT's saved config")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(f, FinetuneConfig)
    _add_push_flag(f)
    f.set_defaults(func=_cmd_finetune)


def _run_record(out: str) -> dict:
    """OUT/train_config.json, the record a resumed run continues from."""
    rec = Path(out) / "train_config.json"
    if not rec.exists():
        raise FileNotFoundError(f"{rec} is missing: nothing to resume in {out}")
    return json.loads(rec.read_text())


def _resumed_config(args: argparse.Namespace) -> dict | None:
    """With `--resume`, the config recorded in OUT/train_config.json (flags given now override it)."""
    return _run_record(args.out)["config"] if args.resume else None


def _fill_inputs(args: argparse.Namespace) -> None:
    """--data and --encoder as given, or with `--resume` the run's own from its record; else one clear error."""
    if args.data is not None and args.encoder is not None:
        return
    if not args.resume:
        raise CLIError("--data and --encoder are required (only --resume can leave them out: it reads the run's)")
    rec = _run_record(args.out)
    if args.data is None:
        args.data = rec["data"]
    if args.encoder is None:
        args.encoder = rec["encoder"]


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from dtrec.train.finetune import load_dataset_features
    from dtrec.train.pretrain import pretrain

    _fill_inputs(args)
    config = resolve_config(PretrainConfig, args, _resumed_config(args))
    sources = [load_dataset_features(d, args.encoder) for d in args.data]
    row = pretrain(sources, config, args.out, progress=not args.quiet, init=args.init, resume=args.resume,
                   record={"data": [str(d) for d in args.data], "encoder": args.encoder})
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(row))
    return _push_after(args, 0, args.out)


def _given_model_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ModelConfig fields this run names: flags given on the command line and the `model` of --config."""
    given = dict(json.loads(Path(args.config).read_text()).get("model") or {}) if getattr(args, "config", None) else {}
    given.update({n: getattr(args, n) for n, _ in _fields(ModelConfig) if getattr(args, n, None) is not None})
    return given


def _finetune_start(args: argparse.Namespace, config: FinetuneConfig, features: Any) -> tuple[str | None, FinetuneConfig]:
    """The checkpoint a fine-tuning starts from, and its config completed from it.

    No --init on offline features means the shipped model, run as it was trained (its architecture and settings,
    the flags given winning); --init X takes X's architecture and score terms, the rest stays the run's own."""
    from dtrec.train.checkpoint import architecture_conflicts, init_differences, settings_from_init
    from dtrec.train.finetune import trained_features

    if args.resume:
        return None, config
    given = _given_model_fields(args)
    if args.init is not None:
        init, by_default = resolve_init(args.init), False
    else:
        init, by_default = default_init(args.encoder, trained_features(features, config).dims), True
    if init is None:
        return None, config
    conflicts = architecture_conflicts(given, init)
    if conflicts:
        whose = "the shipped pretrained model's, which fine-tuning on these features starts from by default" \
            if by_default else "the init's"
        raise CLIError(f"{'; '.join(conflicts)} differs from {whose}: a fine-tuning takes its init's architecture, "
                       "so drop the flag, or add --init none to train this architecture from scratch")
    config = dataclasses.replace(config, model=settings_from_init(config.model, init, set(given), every=by_default))
    if not args.quiet:
        print(f"starting from {init}" + (" (the default for these features; --init none: from scratch)"
                                         if by_default else ""), file=sys.stderr)
    diffs = [] if by_default else init_differences(config.model, init)
    if diffs:  # shown even with --quiet: a silent default here changes what the run learns
        print(f"note: settings unlike the init's: {'; '.join(diffs)}. "
              "Give them as flags (e.g. --repeat-bias, --temperature) to keep the init's.", file=sys.stderr)
    return init, config


def _cmd_finetune(args: argparse.Namespace) -> int:
    from dtrec.train.finetune import finetune, load_dataset_features

    out = Path(args.out)
    _fill_inputs(args)
    config = resolve_config(FinetuneConfig, args, _resumed_config(args))
    dataset, features = load_dataset_features(args.data, args.encoder)
    init, config = _finetune_start(args, config, features)
    result = finetune(dataset, features, config, out, init=init, resume=args.resume,
                      progress=not args.quiet, record={"data": str(args.data), "encoder": args.encoder})
    if os.environ.get("RANK", "0") == "0" and result.get("valid"):
        print(json.dumps({k: result[k] for k in ("best_epoch", "valid", "test") if k in result}))
    return _push_after(args, 0, args.out)


# --------------------------------------------------------------------------- publish / publish-demo
def _add_publish_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="upload a checkpoint, its results and a generated model card to the Hub")
    p.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--repo-id", required=True, help="USER/NAME")
    p.add_argument("--results", default=None, help="results.json (default: the one beside the checkpoint)")
    p.add_argument("--dataset", default=None, help="data set name for the card (default: from the training config)")
    p.add_argument("--recipe", default=None, help="the command that trained it (default: from the training config)")
    p.add_argument("--license", default=None,
                   help="the card's licence (default: 'other' with the data's terms for MovieLens / Amazon "
                        "weights, else apache-2.0)")
    _add_hub_flags(p)
    p.set_defaults(func=_cmd_publish)

    d = sub.add_parser("publish-demo", help="upload a demo folder (dtrec build-demo) as a Hub repo")
    d.add_argument("demo", help="demo folder")
    d.add_argument("--repo-id", required=True, help="USER/NAME")
    d.add_argument("--repo-type", choices=("model", "dataset"), default="model")
    _add_hub_flags(d)
    d.set_defaults(func=_cmd_publish_demo)


def _add_hub_flags(p: argparse.ArgumentParser) -> None:
    # No --token flag on purpose: the token comes from HF_TOKEN or `hf auth login` only.
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to commit to (created when absent)")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--dry-run", metavar="OUT_DIR", default=None,
                   help="write the exact folder that would be uploaded to OUT_DIR and upload nothing")


def _add_push_flag(p: argparse.ArgumentParser) -> None:
    """`--push-to-hub REPO_ID` for commands whose output can be published (pretrain, finetune, build-demo)."""
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="publish the output to this Hub repo when done (token: HF_TOKEN or `hf auth login`)")
    p.add_argument("--hub-private", action="store_true", help="create that Hub repo as private")


def _push_after(args: argparse.Namespace, rc: int | None, folder: str) -> int:
    """Publish `folder` after a successful command when --push-to-hub was given (rank 0 only)."""
    repo_id = getattr(args, "push_to_hub", None)
    if rc or not repo_id or os.environ.get("RANK", "0") != "0":
        return int(rc or 0)
    from dtrec.hub import maybe_push

    print(f"published: {maybe_push(folder, repo_id, private=args.hub_private)}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from dtrec.hub import publish

    out = publish(args.checkpoint, args.repo_id, results=args.results, private=args.private,
                  revision=args.revision, commit_message=args.commit_message, dry_run_dir=args.dry_run,
                  dataset_name=args.dataset, recipe=args.recipe, license=args.license)
    print(f"dry run: wrote the upload for {args.repo_id} to {out}" if args.dry_run else f"published: {out}")
    return 0


def _cmd_publish_demo(args: argparse.Namespace) -> int:
    from dtrec.hub import publish_demo

    out = publish_demo(args.demo, args.repo_id, repo_type=args.repo_type, private=args.private,
                       revision=args.revision, commit_message=args.commit_message, dry_run_dir=args.dry_run)
    print(f"dry run: wrote the upload for {args.repo_id} to {out}" if args.dry_run else f"published: {out}")
    return 0


# --------------------------------------------------------------------------- build-demo / serve
def _add_demo_commands(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build-demo", help="write the demo folder the app serves (default: assets/demo)")
    b.add_argument("--data", required=True, help="prepared data set (dtrec prepare) with extracted features")
    b.add_argument("--checkpoint", required=True, help="DualTower folder (config.json + model.safetensors)")
    b.add_argument("--out", default="assets/demo", help="demo folder to write (replaced whole)")
    b.add_argument("--results", default=None, help="results.json of the run (default: the one beside the checkpoint)")
    b.add_argument("--thumb-size", type=int, default=160, help="maximum poster thumbnail width in px")
    b.add_argument("--jpeg-quality", type=int, default=88, help="JPEG quality of the thumbnails (30-95)")
    b.add_argument("--histories", type=int, default=300, help="real test users' histories to include (at most 300)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--full-precision", action="store_true", help="keep float32 weights and features (default fp16)")
    _add_push_flag(b)
    b.set_defaults(func=_cmd_build_demo)

    env = os.environ.get
    s = sub.add_parser("serve", help="run the Gradio demo (dtrec.app) on a demo folder or a model + catalog")
    s.add_argument("--app", default=None, help=argparse.SUPPRESS)  # removed: refused with one sentence
    s.add_argument("--demo", default=env("DTREC_DEMO"),
                   help="demo folder or Hub repo id written by `dtrec build-demo` "
                        "(default: ./assets/demo; env DTREC_DEMO)")
    s.add_argument("--model", default=env("DTREC_MODEL"),
                   help="model folder, Hub repo id or `pretrained` (the shipped model), overriding the demo "
                        "folder's model (env DTREC_MODEL)")
    s.add_argument("--catalog", default=env("DTREC_CATALOG"),
                   help="catalog folder (items.parquet, images/, features/), overriding the demo's (env DTREC_CATALOG)")
    s.add_argument("--store-dir", default=None,
                   help="writable folder for the item store and uploads (default: ~/.cache/dtrec/store/<hash>)")
    s.add_argument("--index", default=env("DTREC_INDEX", "flat"), choices=INDEX_KINDS,
                   help="nearest-neighbour index: flat (exact, default), hnsw, or ivfpq (from 10,000 items; "
                        "re-ranked with 8-bit vectors) (env DTREC_INDEX)")
    s.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", 7860)))
    s.add_argument("--share", action="store_true", help="open a public gradio.live link (off by default)")
    s.set_defaults(func=_cmd_serve)


def _cmd_build_demo(args: argparse.Namespace) -> int:
    from dtrec.demo import DemoBuildConfig, build_demo, find_results, folder_mb

    cfg = DemoBuildConfig(data=args.data, checkpoint=args.checkpoint, out=args.out, results=args.results,
                          thumb_size=args.thumb_size, jpeg_quality=args.jpeg_quality, n_histories=args.histories,
                          seed=args.seed,
                          half=not args.full_precision)
    out = build_demo(cfg)
    mb = folder_mb(out)
    with open(out / "histories.json") as fh:
        n_hist = len(json.load(fh))
    res = find_results(cfg.checkpoint, cfg.results)
    print(f"wrote {out}: {mb:.1f} MB, {n_hist} histories, results for {', '.join(metric_table(res)) or 'no model'}")
    if mb > cfg.max_mb:
        print(f"warning: {out} is {mb:.1f} MB, over the {cfg.max_mb:g} MB budget for assets/; "
              f"lower --thumb-size or --jpeg-quality", flush=True)
    return _push_after(args, 0, args.out)


def _cmd_serve(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # start → ready includes importing gradio and torch
    if args.app:
        raise CLIError("--app is gone: the UI is part of the package (dtrec.app), so `dtrec serve` needs no app.py.")
    try:
        # the one place outside dtrec/app that imports the UI, here and not at the top: gradio takes seconds
        from dtrec.app import AppOptions, serve
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "gradio":
            raise CLIError("the demo needs gradio: pip install 'dtrec[demo]'") from None
        raise
    model = resolve_checkpoint(args.model) if args.model else None  # `pretrained`: the shipped model
    options = AppOptions(demo=args.demo, model=model, catalog=args.catalog, store_dir=args.store_dir,
                         index=args.index, host=args.host, port=args.port, share=args.share)
    return serve(options, started=started)


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="dtrec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.register("action", "parsers", _Commands)
    sub = parser.add_subparsers(dest="command")
    _add_data_commands(sub)
    _add_extract_command(sub)
    _add_eval_commands(sub)
    _add_train_commands(sub)
    _add_publish_command(sub)
    _add_demo_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dtrec {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
