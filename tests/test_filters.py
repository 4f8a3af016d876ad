"""Search restricted by label / speaker / source / tag: engine (exact and over-fetch paths, both
SQL backends for the tag match), manifest import and the CLI."""
from __future__ import annotations

import json

import pytest

from conftest import ENGINE_STORES, cli_runner, sound, write_wav
from search_core import service as service_mod
from search_core.service import LibraryService

pytestmark = pytest.mark.stores(*ENGINE_STORES)  # Milvus Lite + SQLite, Milvus server + MariaDB
MODEL = "mfcc_stats"


def _meta(i: int) -> dict:
    return {"label": "dog" if i % 2 == 0 else "cat", "speaker": f"s{i % 4}",
            "source": "field" if i < 4 else "studio", "tags": ["Loud", "night"] if i % 3 == 0 else ["quiet"]}


def _matching(flt: dict) -> set[str]:
    def ok(m):
        return all((v.lower() in [t.lower() for t in m["tags"]]) if key == "tag" else m[key] == v.lower()
                   for key, v in flt.items() if v)
    return {f"sound_{i}.wav" for i in range(8) if ok(_meta(i))}


FILTERS = [{"label": "DOG"}, {"speaker": "s1"}, {"source": "studio"}, {"tag": "loud"},
           {"label": "cat", "source": "field"}, {"label": "dog", "tag": "night", "speaker": ""}]


@pytest.fixture
def library(service, clips):
    rep = service.ingest_files(clips, MODEL, metadata=[_meta(i) for i in range(8)])
    assert len(rep.added) == 8
    return service


@pytest.mark.parametrize("exact_max", [4096, 1])  # exact search over the subset; over-fetch + SQL join
def test_filters_restrict_the_search(library, clips, monkeypatch, exact_max):
    monkeypatch.setattr(service_mod, "FILTER_EXACT_MAX", exact_max)
    for flt in FILTERS:
        res = library.search(clips[5], MODEL, k=8, filters=flt)
        assert {h.clip.original_name for h in res.hits} == _matching(flt), flt
        scores = [h.score for h in res.hits]
        assert scores == sorted(scores, reverse=True)
    # the ranking inside the subset is the unfiltered ranking restricted to it
    full = [h.clip.original_name for h in library.search(clips[5], MODEL, k=8).hits]
    dogs = [h.clip.original_name for h in library.search(clips[5], MODEL, k=8, filters={"label": "dog"}).hits]
    assert dogs == [n for n in full if n in _matching({"label": "dog"})]


def test_empty_filters_are_ignored_and_unknown_ones_refused(library, clips):
    plain = [h.clip.id for h in library.search(clips[0], MODEL, k=5).hits]
    assert [h.clip.id for h in library.search(clips[0], MODEL, k=5, filters={"label": " ", "tag": None}).hits] == plain
    assert library.search(clips[0], MODEL, k=5, filters={"label": "unicorn"}).hits == []
    with pytest.raises(ValueError, match="unknown filter 'colour'"):
        library.search(clips[0], MODEL, k=5, filters={"colour": "red"})


def test_tag_filter_matches_whole_tags_literally(backend_settings, tmp_path):
    svc = LibraryService(backend_settings)
    try:
        tags = [["50%_off"], ["5x0y_off"], ["a\\b", "c\"d"], ["50%"]]
        files = [write_wav(tmp_path / f"t{i}.wav", sound(i)) for i in range(4)]
        svc.ingest_files(files, MODEL, metadata=[{"tags": t} for t in tags])

        def found(tag):
            return {h.clip.original_name for h in svc.search(files[0], MODEL, k=4, filters={"tag": tag}).hits}

        assert found("50%_off") == {"t0.wav"}      # % and _ are not wildcards
        assert found("50%") == {"t3.wav"}          # a whole tag, not a prefix
        assert found("a\\b") == {"t2.wav"} and found('c"d') == {"t2.wav"}
        assert found("off") == set()
    finally:
        svc.close()


def test_manifest_metadata_and_cli_filters(tmp_path):
    folder = tmp_path / "import"
    for i in range(6):
        write_wav(folder / f"c{i}.wav", sound(i))
    (folder / "manifest.csv").write_text("path,label,speaker,source,tags\n" + "".join(
        f"c{i}.wav,{'bird' if i < 3 else 'car'},spk{i % 2},{'web' if i % 2 else 'mic'},x;{'odd' if i % 2 else 'even'}\n"
        for i in range(6)))
    cli = cli_runner(tmp_path / "data")

    assert "6 added" in cli("ingest", "--manifest", str(folder / "manifest.csv"), "--model", MODEL, "--quiet")
    hits = json.loads(cli("search", str(folder / "c4.wav"), "--model", MODEL, "--json", "--label", "bird",
                          "--tag", "ODD", "--source", "web").splitlines()[0])["hits"]
    assert [h["name"] for h in hits] == ["c1.wav"] and hits[0]["label"] == "bird"
