"""Near-duplicates: degraded copies of a real clip are marked at ingest and grouped; another take
of the same recording is not; marks go with their clips; the CLI lists the groups."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import ENGINE_STORES, REPO, SHARED_DATA, cli_runner, sound, write_wav
from search_core import duplicates

sys.path.insert(0, str(REPO / "benchmarks"))
from near_duplicates import DEGRADATIONS, write_degraded  # noqa: E402

pytestmark = pytest.mark.stores(*ENGINE_STORES)  # Milvus Lite + SQLite, Milvus server + MariaDB
MODEL = "mfcc_stats"
ESC = SHARED_DATA / "esc50"
ORIGINAL = ESC / "4-132383-A-2.flac"     # a pig
OTHER_TAKE = ESC / "4-132383-B-2.flac"   # the same recording, another 5 s take
needs_data = pytest.mark.skipif(not ORIGINAL.is_file(), reason=f"evaluation data not found at {ESC}")


def test_fingerprint_separates_copies_from_other_sounds():
    rate = 16000
    y = sound(1, 4.0, rate) + 0.3 * sound(2, 4.0, rate)
    fp = duplicates.fingerprint(y, rate)
    rng = np.random.default_rng(0)
    noisy = y + rng.standard_normal(len(y)).astype(np.float32) * float(np.sqrt(np.mean(y ** 2))) / 10
    for copy in (0.3 * y, y[int(0.25 * rate):], noisy):
        assert duplicates.fingerprint_similarity(duplicates.fingerprint(copy, rate), fp) >= duplicates.THRESHOLD
    other = duplicates.fingerprint(sound(5, 4.0, rate), rate)
    assert duplicates.fingerprint_similarity(other, fp) < duplicates.THRESHOLD


def test_groups_are_connected_components():
    pairs = [(5, 2, "m", 0.99), (7, 5, "m", 0.95), (9, 8, "m", 0.97), (4, 2, "n", 0.98)]
    assert duplicates.group_pairs(pairs) == {"m": [(2, [(5, 0.99), (7, 0.95)]), (8, [(9, 0.97)])],
                                             "n": [(2, [(4, 0.98)])]}


@needs_data
def test_ingest_marks_degraded_copies_but_not_another_take(service, tmp_path):
    first = service.ingest_files([ORIGINAL, OTHER_TAKE], MODEL)
    original_id = first.items[0].clip_id
    assert [i.duplicate_of for i in first.items] == [None, None]  # another take is not a copy
    rng = np.random.default_rng(0)
    copies = [write_degraded(ORIGINAL, kind, tmp_path, rng) for kind in DEGRADATIONS]
    rep = service.ingest_files(copies, MODEL)
    assert [i.status for i in rep.items] == ["added"] * len(copies)
    # each copy is marked as a near-duplicate of the original, or of a copy already marked so
    groups = service.duplicate_groups(MODEL)
    assert len(groups) == 1
    g = groups[0]
    assert g.original.id == original_id
    assert sorted(c.original_name for c, _ in g.copies) == sorted(p.name for p in copies)
    assert all(sc >= duplicates.THRESHOLD for _, sc in g.copies)
    assert "marked as near-duplicates" in rep.summary()

    # marks go with their clips
    victim = g.copies[0][0]
    assert service.delete_clip(victim.id)
    assert service.duplicate_groups(MODEL)[0].size == len(copies)
    assert service.delete_clip(original_id)
    assert all(original_id not in (g.original.id, *[c.id for c, _ in g.copies])
               for g in service.duplicate_groups(MODEL))


@needs_data
def test_cli_ingest_reports_marks_and_lists_groups(tmp_path):
    y, rate = sf.read(str(ORIGINAL), dtype="float32")
    quiet = write_wav(tmp_path / "quiet copy.wav", y * 0.3, rate)
    cli = cli_runner(tmp_path / "data")

    out = cli("ingest", str(ORIGINAL), str(quiet), "--model", MODEL, "--quiet")
    assert "1 marked as near-duplicates" in out
    groups = json.loads(cli("duplicates", "--json"))
    assert [(g["original"]["name"], [c["name"] for c in g["copies"]]) for g in groups] == \
        [(ORIGINAL.name, ["quiet copy.wav"])]


def test_threshold_env_is_validated(monkeypatch):
    monkeypatch.setenv("NEAR_DUPLICATE_THRESHOLD", "0.5")
    assert duplicates.threshold_for(MODEL) == 0.5
    monkeypatch.setenv("NEAR_DUPLICATE_THRESHOLD", "2")
    with pytest.raises(ValueError, match="NEAR_DUPLICATE_THRESHOLD"):
        duplicates.threshold_for(MODEL)


@needs_data
def test_bulk_ingest_reuses_fingerprints_instead_of_decoding_candidates(service, tmp_path, monkeypatch):
    service.ingest_files([ORIGINAL], MODEL)
    rng = np.random.default_rng(1)
    copy = write_degraded(ORIGINAL, "gain -9 dB", tmp_path, rng)
    from search_core import audio as audio_mod

    decoded = []
    real_load = audio_mod.load
    monkeypatch.setattr(audio_mod, "load", lambda path, *a, **kw: decoded.append(str(path)) or real_load(path, *a, **kw))
    rep = service.ingest_files([copy], MODEL)
    assert rep.items[0].duplicate_of == service.list_clips(MODEL, query=ORIGINAL.name)[0][0].id
    assert all(str(service.library_dir) not in p for p in decoded)  # the original's file was not decoded again
    assert len(service.fingerprints) == 2


def test_fingerprint_cache_is_bounded_and_keyed_by_content():
    cache = duplicates.FingerprintCache(max_bytes=3 * 400)
    from search_core.metadata import ClipRow

    def row(i, sha):
        return ClipRow(i, sha, "", "", 1.0, 16000, 1, None, None, None, [], None)

    for i in range(5):
        cache.put(i, f"sha{i}", np.zeros(100, np.float32))  # 400 bytes each
    assert len(cache) == 3 and cache.get(row(0, "sha0")) is None and cache.get(row(4, "sha4")) is not None
    assert cache.get(row(4, "other-content")) is None


def _similarity_by_loop(a, b, shift):
    """The definition: Pearson correlation of the flattened overlap at each shift, the best one."""
    need, best = 0.75 * min(len(a), len(b)), -1.0
    for d in range(-shift, shift + 1):
        x, y = (a[d:], b) if d >= 0 else (a, b[-d:])
        n = min(len(x), len(y))
        if n < max(need, 1):
            continue
        best = max(best, float(np.corrcoef(x[:n].ravel(), y[:n].ravel())[0, 1]))
    return best


@pytest.mark.parametrize("la,lb", [(300, 300), (280, 320), (64, 50)])
def test_fast_fingerprint_similarity_equals_the_definition(la, lb):
    rng = np.random.default_rng(la)
    base = rng.standard_normal((max(la, lb) + 20, 32))
    a, b = base[:la] + 0.3 * rng.standard_normal((la, 32)), base[7:7 + lb]
    shift_s = 20 * duplicates.FP_HOP / duplicates.FP_RATE
    fast = duplicates.fingerprint_similarity(a, b, max_shift_s=shift_s)
    assert fast == pytest.approx(_similarity_by_loop(a, b, 20), abs=1e-9)
    assert fast > 0.9  # the true offset (7 frames) is inside the searched range
