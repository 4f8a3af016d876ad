"""Command line over the library service.

    python -m search_core models
    python -m search_core ingest PATH [PATH ...] [--model M] [--manifest CSV]
    python -m search_core search FILE [FILE ...] [--model M] [-k 10] [--json]
    python -m search_core count [--model M]
    python -m search_core list [--model M] [--limit N]
    python -m search_core delete CLIP_ID [CLIP_ID ...]
    python -m search_core drop MODEL --yes
    python -m search_core recover
    python -m search_core recenter --model M [--off | --status]     # collection mean + re-index
    python -m search_core search FILE --label dog --tag outdoor     # metadata filters
    python -m search_core search FILE --like 12 --like 40 --unlike 7 --hide-seen   # relevance feedback
    python -m search_core duplicates [--model M] [--json]
    python -m search_core enrol NAME FILE [FILE ...] [--model M] [--add]
    python -m search_core identify FILE [FILE ...] [--model M] [--threshold T] [--json]
    python -m search_core speakers [--model M] [--delete NAME]
    python -m search_core map --model M --out map.png|map.csv [--refit]
    python -m search_core eval MANIFEST --model M [--relevant COL] [--group COL] [--drop-equal COL] [--center] [--feedback]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .audio import AudioError, fmt_seconds
from .config import get_settings
from .faults import ServiceUnavailable, service_fault
from .models import WeightsNotInstalled, custom_model_problems, describe, model_names
from .models import progress as model_progress


_open: list = []  # services this command opened; closed on exit (gives their writer lease up)


def _service(recover: bool | str = "start"):
    """The library service; its start-up recovery is the cheap part (``recover`` does it all)."""
    from .service import LibraryService

    _open.append(LibraryService(get_settings(), recover=recover))
    return _open[-1]


def cmd_models(args) -> int:
    for name in model_names():
        print(describe(name))
    for problem in custom_model_problems():
        print(problem, file=sys.stderr)
    return 0


def cmd_ingest(args) -> int:
    svc = _service()
    model = args.model or svc.settings.default_sound_model
    bar = tqdm(total=0, unit="file", disable=args.quiet)

    def progress(done, total, name):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name[:30])
        bar.refresh()

    reports = []
    try:
        if args.manifest:
            reports.append(svc.ingest_folder(Path(args.manifest).parent, model, manifest=args.manifest,
                                             progress=progress))
        files = []
        for p in args.paths:
            if Path(p).is_dir():
                bar.n = 0
                reports.append(svc.ingest_folder(p, model, progress=progress))
            else:
                files.append(p)
        if files:
            reports.append(svc.ingest_files(files, model, progress=progress))
    except ServiceUnavailable as err:  # count what the earlier folders/manifest stored too
        raise err.with_stored((err.stored or 0) + sum(len(r.added) for r in reports)) from err
    finally:
        bar.close()
    errors = 0
    for rep in reports:
        for item in rep.errors:
            print(f"rejected: {item.message}", file=sys.stderr)
        errors += len(rep.errors)
        print(rep.summary())
    print(f"library: {svc.count(model)} clips for {model}")
    return 1 if errors and not any(r.added or r.existing for r in reports) else 0


def cmd_search(args) -> int:
    svc = _service()
    model = args.model or svc.settings.default_sound_model
    for file in args.files:
        filters = {"label": args.label, "speaker": args.speaker, "source": args.source, "tag": args.tag}
        res = svc.search(file, model, args.k, filters=filters, liked=args.like or (), disliked=args.unlike or (),
                         hide_seen=args.hide_seen)
        if args.json:  # one JSON line per query
            print(json.dumps({"query": file, "model": model, "hits": [
                {"rank": h.rank, "clip_id": h.clip.id, "name": h.clip.original_name, "score": round(h.score, 4),
                 "distance": round(h.distance, 4), "start_s": h.start_s, "end_s": h.end_s, "label": h.clip.label,
                 "speaker": h.clip.speaker, "path": str(h.path)} for h in res.hits]}))
            continue
        part = (f", searched its first {fmt_seconds(res.query.duration_s)} of "
                f"{fmt_seconds(res.query.source_duration_s)}" if res.query.is_part else "")
        if args.like or args.unlike or args.hide_seen:
            part += ", after relevance feedback" + ("; the first page and the marked clips hidden" if args.hide_seen else "")
        print(f"{file}: {len(res.hits)} hits ({model}, {res.seconds['total'] * 1000:.0f} ms{part})")
        for h in res.hits:
            where = f" [{h.start_s:.1f}-{h.end_s:.1f} s]" if h.is_segment else ""
            extra = " ".join(f"{k}={v}" for k, v in (("label", h.clip.label), ("speaker", h.clip.speaker)) if v)
            print(f"{h.rank:3d}. cosine {h.score:.3f}  dist {h.distance:.3f}  #{h.clip.id} "
                  f"{h.clip.original_name}{where} {extra}")
    return 0


def cmd_count(args) -> int:
    svc = _service()
    if args.model:
        print(svc.count(args.model))
    else:
        counts = svc.counts()
        for model, n in sorted(counts.items()):
            print(f"{model}: {n}")
        if not counts:
            print("0 clips: the library is empty (add some with: python -m search_core ingest FILES)")
    return 0


def cmd_list(args) -> int:
    svc = _service()
    for clip, models in svc.list_clips(args.model, args.query, 0, args.limit):
        print(f"#{clip.id}\t{clip.original_name}\t{clip.duration_s:.2f}s\t{clip.created_at:%Y-%m-%d %H:%M}\t{','.join(models)}")
    return 0


def cmd_delete(args) -> int:
    svc = _service()
    missing = [i for i in args.ids if not svc.delete_clip(i)]
    for i in missing:
        print(f"no clip #{i}", file=sys.stderr)
    return 1 if missing else 0


def cmd_drop(args) -> int:
    if not args.yes:
        print(f"this deletes every vector of model {args.model}; add --yes to confirm", file=sys.stderr)
        return 2
    n = _service().drop_model(args.model)
    print(f"dropped {args.model}: {n} vectors")
    return 0


def cmd_recover(args) -> int:
    svc = _service()  # start-up did the cheap part; this pass lists every vector and file
    rep = svc.recover()
    print(json.dumps({**vars(rep), **svc.check()}))
    return 0


def cmd_recenter(args) -> int:
    from .recenter import RecenterRefused

    svc = _service()
    model = args.model or svc.settings.default_sound_model
    if not args.status:
        try:
            print(svc.recenter(model, off=args.off).summary())
        except RecenterRefused as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(svc.centering_status(model))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_manifest, rules_for

    settings = get_settings()
    model = args.model or settings.default_sound_model
    rules = rules_for(args.manifest, args.relevant, args.group, args.drop_equal or ())
    bar = tqdm(total=0, unit="clip", disable=args.quiet)

    def progress(stage, done, total):
        bar.set_description(stage)
        bar.total = total
        bar.n = done
        bar.refresh()

    res = evaluate_manifest(args.manifest, model, rules, k=args.k, data_dir=args.data_dir,
                            with_centered=args.center, limit=args.limit, every=args.every,
                            with_feedback=args.feedback, progress=progress)
    bar.close()
    print(json.dumps(res.to_dict()) if args.json else res.summary())
    return 0


def cmd_duplicates(args) -> int:
    svc = _service()
    groups = svc.duplicate_groups(args.model)
    if args.json:
        print(json.dumps([{"model": g.model, "original": {"clip_id": g.original.id, "name": g.original.original_name},
                           "copies": [{"clip_id": c.id, "name": c.original_name, "score": round(sc, 4)}
                                      for c, sc in g.copies]} for g in groups]))
        return 0
    if not groups:
        print("no near-duplicates marked")
    for g in groups:
        print(f"{g.model}: #{g.original.id} {g.original.original_name} ({g.size} clips)")
        for c, sc in g.copies:
            print(f"    #{c.id} {c.original_name}  similarity {sc:.3f}")
    return 0


def cmd_map(args) -> int:
    svc = _service()
    model = args.model or svc.settings.default_sound_model
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".csv"):
        raise ValueError(f"--out {out.name}: name a .png (a picture) or a .csv (the coordinates)")
    m = svc.library_map(model, refit=args.refit)
    if out.suffix.lower() == ".csv":
        m.write_csv(out)
    else:
        from .plots import NO_LABEL, map_image

        map_image(m.xy, [c.label or NO_LABEL for c in m.clips]).save(out)
    how = "fitted now" if m.refitted else f"fitted earlier, {m.placed} clip(s) placed since"
    print(f"{out}: {len(m)} clips of {model} ({how} on {m.fitted_on} clips; {m.seconds:.1f} s)")
    return 0


def _speaker_model(svc, args) -> str:
    return args.model or svc.settings.default_speaker_model


def cmd_enrol(args) -> int:
    svc = _service()
    sp = svc.speakers.enrol(args.name, args.files, _speaker_model(svc, args), add=args.add)
    print(f"enrolled {sp.name} with {sp.model} from {sp.n_clips} clip(s)")
    return 0


def cmd_identify(args) -> int:
    svc = _service()
    model = _speaker_model(svc, args)
    for file in args.files:
        res = svc.speakers.identify(file, model, threshold=args.threshold)
        if args.json:
            print(json.dumps({"query": file, "model": model, "speaker": res.name, "score": round(res.score, 4),
                              "threshold": res.threshold,
                              "ranking": [{"name": n, "score": round(sc, 4)} for n, sc in res.ranking]}))
        else:
            print(f"{file}: {res.name} (similarity {res.score:.3f}, threshold {res.threshold:.3f}, {model})")
    return 0


def cmd_speakers(args) -> int:
    svc = _service()
    if args.delete:
        n = svc.speakers.delete(args.delete, args.model)
        if not n:
            print(f"no enrolled speaker {args.delete!r}", file=sys.stderr)
            return 1
        print(f"deleted {args.delete} ({n} voiceprint(s))")
        return 0
    for sp in svc.speakers.list(args.model):
        print(f"{sp.name}\t{sp.model}\t{sp.n_clips} clips\t{sp.updated_at:%Y-%m-%d %H:%M}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search_core", description="Audio similarity search engine")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("models", help="list models and their status").set_defaults(fn=cmd_models)
    s = sub.add_parser("ingest", help="add files or folders to the library")
    s.add_argument("paths", nargs="*")
    s.add_argument("--model")
    s.add_argument("--manifest", help="CSV with a path column (relative to it) and label/speaker/source/tags")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_ingest)
    s = sub.add_parser("search", help="find the clips most similar to each FILE")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--model")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true")
    for field in ("label", "speaker", "source", "tag"):
        s.add_argument(f"--{field}", help=f"only clips whose {field} is this (case-insensitive)"
                       if field != "tag" else "only clips with this tag (case-insensitive)")
    s.add_argument("--like", action="append", metavar="ID",
                   help="relevance feedback: more like this clip id (as search prints it, #ID; repeatable or 3,7)")
    s.add_argument("--unlike", action="append", metavar="ID", help="relevance feedback: less like this clip id")
    s.add_argument("--hide-seen", action="store_true",
                   help="leave out the clips this search shows without feedback (its top k) and the marked ones")
    s.set_defaults(fn=cmd_search)
    s = sub.add_parser("count", help="clips per model")
    s.add_argument("--model")
    s.set_defaults(fn=cmd_count)
    s = sub.add_parser("list", help="browse the library, newest first")
    s.add_argument("--model")
    s.add_argument("--query", default="")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(fn=cmd_list)
    s = sub.add_parser("delete", help="delete clips by id")
    s.add_argument("ids", nargs="+", type=int)
    s.set_defaults(fn=cmd_delete)
    s = sub.add_parser("drop", help="drop a model's collection")
    s.add_argument("model")
    s.add_argument("--yes", action="store_true")
    s.set_defaults(fn=cmd_drop)
    sub.add_parser("recover", help="repair interrupted writes, report consistency").set_defaults(fn=cmd_recover)
    s = sub.add_parser("recenter", help="estimate a model's collection mean again and re-index its vectors")
    s.add_argument("--model")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--off", action="store_true", help="search the collection uncentered from now on")
    g.add_argument("--status", action="store_true", help="only say how the collection is centered")
    s.set_defaults(fn=cmd_recenter)
    s = sub.add_parser("duplicates", help="list groups of near-duplicate clips (marked at ingest)")
    s.add_argument("--model")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_duplicates)
    s = sub.add_parser("enrol", help="enrol a speaker from one or more clips (their mean voiceprint)")
    s.add_argument("name")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--model", help="speaker model (default: DEFAULT_SPEAKER_MODEL)")
    s.add_argument("--add", action="store_true", help="add the clips to an existing enrolment instead of replacing it")
    s.set_defaults(fn=cmd_enrol)
    s = sub.add_parser("identify", help="which enrolled speaker is speaking in each FILE (or unknown)")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--model", help="speaker model (default: DEFAULT_SPEAKER_MODEL)")
    s.add_argument("--threshold", type=float, help="cosine similarity needed (default: the model's calibrated one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_identify)
    s = sub.add_parser("speakers", help="list enrolled speakers (or delete one with --delete NAME)")
    s.add_argument("--model")
    s.add_argument("--delete", metavar="NAME")
    s.set_defaults(fn=cmd_speakers)
    s = sub.add_parser("map", help="the library of a model as a 2-D map: a PNG picture or a CSV of coordinates")
    s.add_argument("--model", help="default: DEFAULT_SOUND_MODEL")
    s.add_argument("--out", required=True, help="map.png (dots coloured by label) or map.csv (clip_id,name,label,x,y)")
    s.add_argument("--refit", action="store_true", help="fit the map again (else clips added since are placed on it)")
    s.set_defaults(fn=cmd_map)
    s = sub.add_parser("eval", help="retrieval quality of a model on a labelled manifest (P@k, mAP@k, R@1)",
                       description="Index every clip of MANIFEST (in a temporary DATA_DIR unless --data-dir), "
                                   "query with each clip, report P@k, mAP@k, R@1 and the ANN recall@k. "
                                   "Without --relevant, manifests named esc50/fsdd/emodb use the rules of "
                                   "their README; others use relevant = same label.")
    s.add_argument("manifest", metavar="MANIFEST")
    s.add_argument("--model")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--relevant", help="column whose equal values are relevant (e.g. label, speaker)")
    s.add_argument("--group", help="column of groups whose members are dropped from each other's candidates")
    s.add_argument("--drop-equal", action="append", metavar="COL",
                   help="drop candidates with the query's value in COL (repeatable)")
    s.add_argument("--center", action="store_true", help="also report exact search on the raw embeddings, with and without subtracting their mean")
    s.add_argument("--feedback", action="store_true",
                   help="also simulate one round of relevance feedback (exact search): residual P@k")
    s.add_argument("--data-dir", help="keep the stores here instead of a temporary folder")
    s.add_argument("--limit", type=int, help="use only the first N rows")
    s.add_argument("--every", type=int, default=1, help="use every N-th row (a deterministic subset)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # pymilvus logs every failed retry with a traceback, SQLAlchemy's pool each connection it could
    # not roll back once MySQL went; a store that stopped answering is reported below in one line
    import pymilvus  # noqa: F401 - it sets its loggers up when imported
    for name in ("pymilvus", "sqlalchemy.pool"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        if getattr(args, "quiet", False):
            return args.fn(args)
        with model_progress.listening(model_progress.Printer(sys.stderr)):  # a first use says what it waits for
            return args.fn(args)
    except (AudioError, WeightsNotInstalled, ValueError, KeyError, NotADirectoryError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except Exception as err:  # Milvus or the database stopped answering: one line, not a traceback
        fault = service_fault(err, get_settings())
        if fault is None:
            raise
        print(f"error: {fault}", file=sys.stderr)
        return 3
    finally:
        while _open:
            _open.pop().close()


if __name__ == "__main__":
    sys.exit(main())
