"""Bounded work per request on a public link (issue 12, items 3-6 and 9): small files that decode to
gigabytes, long queries, result thumbnails of long clips, identical results written while they are
streamed, hits deleted during a search, and clips too short to embed.

Memory is measured where it matters, as the peak resident set (VmHWM of /proc/self/status) of a
fresh interpreter that does one thing, against a bound derived from the limits; no test is timed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, make_settings, sound, tone, write_wav
from search_core import audio as audio_mod
from search_core.audio import AudioError
from search_core.models import get_model
from search_core.service import LibraryService

MODEL = "mfcc_stats"  # weight-free, 16 kHz
MB = 1 << 20
BLOCK_BYTES = audio_mod.BLOCK_SAMPLES * 4
#: What a fresh interpreter may add to its peak besides the audio itself: a few decoded blocks in
#: flight (block, its mono mix, the resampler's output), librosa's MFCC work space, allocator slack.
SLACK = 4 * BLOCK_BYTES + 32 * MB


def long_file(path: Path, seconds: float, rate: int, channels: int, loud_s: float = 2.0) -> Path:
    """A FLAC of ``seconds`` whose first ``loud_s`` hold a sound and the rest silence: a few kB on
    disk, ``seconds * rate * channels`` samples once decoded. Written in blocks (little memory here)."""
    block = 1 << 16
    with sf.SoundFile(str(path), "w", rate, channels, subtype="PCM_16", format="FLAC") as f:
        head = sound(1, loud_s, rate)
        f.write(np.repeat(head[:, None], channels, axis=1))
        left = int(seconds * rate) - len(head)
        silence = np.zeros((block, channels), np.int16)
        while left > 0:
            f.write(silence[:min(block, left)])
            left -= block
    return path


def peak_growth(setup: str, action: str, env: dict | None = None) -> dict:
    """Run ``setup`` then ``action`` in a fresh interpreter; returns how much ``action`` raised the
    peak resident set (bytes) and whatever ``action`` put in the dict ``out``."""
    script = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, {repo!r})
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        out = {{}}
    """).format(repo=str(REPO)) + textwrap.dedent(setup) + "\nbase = hwm()\n" + textwrap.dedent(action) + \
        "\nout['growth'] = hwm() - base\nprint(json.dumps(out))\n"
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- 3. small files that decode to gigabytes ----------------------------------------------------

@pytest.mark.parametrize("seconds,rate,channels", [(5 * 60, 96000, 6),    # 173 M samples: 0.7 GB as float32
                                                   (119 * 60, 8000, 1)])  # 2 h at 8 kHz: 0.23 GB, 0.46 GB at 16 kHz
def test_a_query_decodes_only_the_part_it_searches(tmp_path, seconds, rate, channels):
    """The issue's files (20 min x 6 ch x 96 kHz: +3.6 GB; 2 h mono 8 kHz: +2.5 GB) as a query: only
    the first ``max_query_s`` are decoded, in blocks, so the peak grows by the block and the part."""
    f = long_file(tmp_path / "small_but_long.flac", seconds, rate, channels)
    assert f.stat().st_size < 3 * MB
    res = peak_growth(
        setup=f"""
            from search_core.service import LibraryService
            from search_core.models import get_model
            import numpy as np
            svc = LibraryService()
            get_model({MODEL!r}).embed([np.random.default_rng(0).standard_normal(32000).astype(np.float32)])
        """,
        action=f"""
            a, vec = svc.embed_query({str(f)!r}, {MODEL!r})
            out.update(duration=a.duration_s, whole=getattr(a, "source_duration_s", None))
        """, env={"DATA_DIR": str(tmp_path / "data")})
    part = 30.0 * 16000 * 4  # max_query_s at the model's rate, float32
    print(f"peak grew by {res['growth'] / MB:.1f} MB")
    assert res["growth"] < 2 * part + SLACK, f"peak grew by {res['growth'] / MB:.0f} MB"
    assert res["duration"] == pytest.approx(30.0, abs=0.01) and res["whole"] == pytest.approx(seconds, abs=0.01)


def test_ingest_memory_is_bounded_by_the_output_not_the_file(tmp_path):
    """A long file for the library is read in blocks: the peak grows by the mono output at the
    model's rate (which the embedding needs) plus a few blocks, not by the decoded multichannel file."""
    seconds, rate, channels = 10 * 60, 48000, 2  # 57.6 M samples: 230 MB decoded, 38 MB mono at 16 kHz
    f = long_file(tmp_path / "ten_minutes.flac", seconds, rate, channels)
    res = peak_growth(
        setup="from search_core import audio as audio_mod\nimport soxr, numpy as np\n"
              "soxr.resample(np.ones(48000, np.float32), 48000, 16000)",
        action=f"""
            a = audio_mod.load({str(f)!r}, 16000)
            out.update(duration=a.duration_s)
        """)
    output = seconds * 16000 * 4
    print(f"peak grew by {res['growth'] / MB:.1f} MB")
    assert res["duration"] == pytest.approx(seconds, abs=0.01)
    assert res["growth"] < output + SLACK, f"peak grew by {res['growth'] / MB:.0f} MB"


def test_decoding_work_is_bounded_from_the_header(tmp_path, monkeypatch):
    """frames x channels over ``max_decode_samples`` is refused from the header alone, with the reason."""
    f = long_file(tmp_path / "wide.flac", 10.0, 96000, 2)  # 1.92 M samples
    svc = LibraryService(make_settings(tmp_path, max_decode_samples=1_000_000))
    try:
        def no_decode(*a, **kw):
            raise AssertionError("decoded a file over the work limit")
        monkeypatch.setattr(audio_mod, "blocks", no_decode)
        rep = svc.ingest_files([f], MODEL)
        assert [i.message for i in rep.errors] == [
            "wide.flac: decoding it means 1.9 M samples (10.0 s x 2 channels at 96 kHz), over the 1.0 M-sample limit"]
        with pytest.raises(AudioError, match=r"^wide\.flac: decoding it means 1\.9 M samples"):
            svc.search(f, MODEL)
        assert svc.count() == 0
    finally:
        svc.close()


# -- 4. bounded compute per search, searches responsive during an import --------------------------

def test_a_long_query_is_embedded_on_a_bounded_part(service, tmp_path, monkeypatch):
    """A 20-minute query embeds 30 s (``max_query_s``), and the page says which part was searched."""
    import app

    service.ingest_file(write_wav(tmp_path / "a.wav", sound(1, 3.0)), MODEL)
    q = long_file(tmp_path / "twenty_minutes.flac", 20 * 60, 16000, 1, loud_s=3.0)
    m = get_model(MODEL)
    seen = []
    real = m.embed
    monkeypatch.setattr(m, "embed", lambda ws, *a, **kw: (seen.extend(len(w) for w in ws), real(ws, *a, **kw))[1])
    res = service.search(q, MODEL, k=1)
    assert seen == [30 * 16000]
    assert res.query.is_part and res.query.source_duration_s == pytest.approx(1200, abs=0.01)
    assert app.query_note(res.query) == "(searched the first 30.0 s of the 20.0 min query)"
    assert app.query_note(service.search(tmp_path / "a.wav", MODEL, k=1).query) == "(query 3.0 s)"


def test_imports_run_in_their_own_queue_and_never_take_a_search_worker(service):
    """Search and identify share four workers; uploads, folder imports and enrolments run one at a
    time in another group, so a long admin import leaves every search worker free."""
    import app

    demo = app.build_app(service)
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    search_group = {fns[n].concurrency_id for n in ("search", "identify_speaker")}
    import_group = {fns[n].concurrency_id for n in ("ingest", "import_folder", "enrol_speaker")}
    assert len(search_group) == 1 and len(import_group) == 1 and search_group != import_group
    assert fns["search"].concurrency_limit == 4
    assert all(fns[n].concurrency_limit == 1 for n in ("ingest", "import_folder", "enrol_speaker"))


# -- 5. thumbnails of long library clips ----------------------------------------------------------

def test_a_hit_thumbnail_streams_the_file_in_small_blocks(tmp_path):
    """The waveform of a 5-min 6-channel 96 kHz clip (0.7 GB decoded; the issue's 20-min one peaked at
    4.9 GB) is made with one block in memory at a time."""
    f = long_file(tmp_path / "wide_long.flac", 5 * 60, 96000, 6)
    res = peak_growth(
        setup="import app\nimport numpy as np",
        action=f"""
            env, dur = app._envelope({str(f)!r})
            out.update(columns=len(env) // 2, dur=dur, peak=float(np.max(env)))
        """)
    print(f"peak grew by {res['growth'] / MB:.1f} MB")
    assert res["columns"] == 400 and res["dur"] == pytest.approx(300) and res["peak"] > 0.3
    assert res["growth"] < SLACK, f"peak grew by {res['growth'] / MB:.0f} MB"


def test_the_streamed_envelope_matches_the_whole_file(tmp_path):
    import app
    from search_core import plots

    y = np.stack([sound(2, 7.0), sound(3, 7.0)], axis=1)
    f = write_wav(tmp_path / "two.wav", y)
    env, dur = app._envelope(str(f))
    mono = y.mean(axis=1)
    per_col = -(-len(mono) // 400)
    cols = np.pad(mono, (0, -len(mono) % per_col), mode="edge").reshape(-1, per_col)
    assert dur == pytest.approx(7.0)
    np.testing.assert_allclose(env, np.column_stack([cols.min(1), cols.max(1)]).ravel(), atol=1e-4)
    assert plots.envelope(iter([]), 0, 400).size == 0


# -- 6. identical results are written once, atomically -------------------------------------------

def _served_paths(outs) -> list[str]:
    """The files Gradio serves for the /search outputs, via the components' own postprocess."""
    import gradio as gr

    image, audio = gr.Image(format="png"), gr.Audio()
    paths = [image.postprocess(outs[0]).path, gr.Image(format="jpeg").postprocess(outs[1]).path]
    for i in range(3, len(outs) - 1, 4):
        if outs[i + 1] is not None:
            paths += [audio.postprocess(outs[i + 1]).path, image.postprocess(outs[i + 3]).path]
    return paths


def test_identical_results_are_never_rewritten_while_served(service, tmp_path):
    """Eight clients searching for the same clip got the same files; Gradio rewrote them in place while
    other responses streamed them (h11: Too little/much data for declared Content-Length). A second
    identical search must leave each served file alone, or replace it by rename (a reader keeps the
    old inode), never write into it."""
    import app

    rate = 16000
    y = np.concatenate([sound(i, 4.0, rate) for i in range(4)])
    service.ingest_file(write_wav(tmp_path / "long.wav", y, rate), MODEL)
    service.ingest_file(write_wav(tmp_path / "short.wav", sound(6, 2.0, rate), rate), MODEL)
    q = write_wav(tmp_path / "q.wav", y[6 * rate:11 * rate], rate)
    res = service.search(q, MODEL, k=2)
    assert any(h.is_segment for h in res.hits)  # a segment: its audio is a file made per search
    render = tmp_path / "render"
    first = _served_paths(app.search_outputs(res, MODEL, render))
    assert len(first) == 6
    streaming = {p: open(p, "rb") for p in first}  # responses still sending these files
    try:
        content = {p: Path(p).read_bytes() for p in first}
        for p, f in streaming.items():
            os.utime(p, ns=(10**9, 10**9))  # an in-place write would move this
        second = _served_paths(app.search_outputs(res, MODEL, render))
        assert second == first
        for p, f in streaming.items():
            st, held = os.stat(p), os.fstat(f.fileno())
            assert st.st_ino != held.st_ino or st.st_mtime_ns == 10**9, f"{Path(p).name} was rewritten in place"
            assert held.st_mtime_ns == 10**9 and f.read() == content[p]  # what the response streams is intact
    finally:
        for f in streaming.values():
            f.close()


def test_result_files_are_written_once_under_their_content_hash(tmp_path):
    from search_core import plots

    a = plots.save_once(b"one", tmp_path, ".png")
    ino = a.stat().st_ino
    assert plots.save_once(b"one", tmp_path, ".png") == a and a.stat().st_ino == ino  # fresh: untouched
    assert plots.save_once(b"two", tmp_path, ".png") != a
    os.utime(a, (1, 1))
    assert plots.prune(tmp_path) == 1 and not a.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# -- deleted while others search ------------------------------------------------------------------

def test_a_clip_deleted_during_a_search_drops_out_of_the_results(service, tmp_path, monkeypatch):
    """13 of 31 searches got a 403 for a clip deleted while they ran. Deleted between the search
    reading its rows and the result being drawn, the hit drops out; the others are shown."""
    a = service.ingest_file(write_wav(tmp_path / "a.wav", sound(1, 3.0)), MODEL)
    service.ingest_file(write_wav(tmp_path / "b.wav", sound(2, 3.0)), MODEL)
    real = service.meta.ready_refs

    def read_then_delete(*args, **kw):  # another request deletes the clip right after this read
        refs = real(*args, **kw)
        service.delete_clip(a.clip_id)
        return refs
    monkeypatch.setattr(service.meta, "ready_refs", read_then_delete)
    res = service.search(tmp_path / "a.wav", MODEL, k=2)
    assert [h.clip.original_name for h in res.hits] == ["b.wav"]


def test_a_hit_deleted_before_its_result_is_drawn_drops_out(service, tmp_path):
    import app

    rate = 16000
    y = np.concatenate([sound(i, 4.0, rate) for i in range(4)])
    long = service.ingest_file(write_wav(tmp_path / "long.wav", y, rate), MODEL)
    short = service.ingest_file(write_wav(tmp_path / "short.wav", sound(6, 2.0, rate), rate), MODEL)
    service.ingest_file(write_wav(tmp_path / "other.wav", sound(7, 2.0, rate), rate), MODEL)
    res = service.search(write_wav(tmp_path / "q.wav", y[6 * rate:11 * rate], rate), MODEL, k=3)
    assert len(res.hits) == 3
    service.delete_clip(long.clip_id)   # a segment hit: its range can no longer be read
    service.delete_clip(short.clip_id)  # a whole-clip hit: its file would answer 403
    outs = app.search_outputs(res, MODEL, tmp_path / "render")
    assert [row["name"] for row in outs[-1]] == ["other.wav"]
    assert outs[2].startswith("**1** hits")
    assert [o["visible"] for o in outs[3:3 + 4 * app.MAX_K:4]].count(True) == 1


# -- 9. too short for the model -------------------------------------------------------------------

def test_clips_too_short_for_the_model_are_refused_for_ingest_and_query(service, tmp_path):
    """A 1-sample WAV was indexed and scored 0.93 against an unrelated tone."""
    one = write_wav(tmp_path / "one.wav", np.full(1, 0.5, np.float32))
    short = write_wav(tmp_path / "short.wav", tone(440, 0.05))
    service.ingest_file(write_wav(tmp_path / "tone.wav", tone(1000, 2.0)), MODEL)
    msg = r"is 0\.1 ms long; mfcc_stats needs at least 0\.1 s of audio$"
    with pytest.raises(AudioError, match=r"^one\.wav: " + msg):
        service.ingest_file(one, MODEL)
    with pytest.raises(AudioError, match=r"^one\.wav: " + msg):
        service.search(one, MODEL)
    with pytest.raises(AudioError, match=r"^short\.wav: is 50\.0 ms long; mfcc_stats needs at least 0\.1 s"):
        service.search(short, MODEL)
    assert service.count() == 1
    # just over the minimum is a clip like any other
    ok = write_wav(tmp_path / "ok.wav", tone(440, 0.15))
    assert service.ingest_file(ok, MODEL).status == "added"


def test_every_model_states_a_minimum_length_its_front_end_can_use():
    from search_core.models import model_names

    for name in model_names():
        info = get_model(name).info
        assert 0.05 <= info.min_duration_s <= 1.0, name


def test_a_search_embeds_between_the_batches_of_a_long_import():
    """A model embeds one call at a time; an import's thousands of segments were one call, so a search
    with the same model waited for all of them. The lock is now taken per batch."""
    import threading

    from search_core.models.base import EmbeddingModel, ModelInfo

    calls: list[str] = []
    searching = threading.Event()

    class Slow(EmbeddingModel):
        info = ModelInfo("slow", "sound", 16000, 4, "test model")

        def _embed(self, waveforms):
            calls.append(threading.current_thread().name)
            if len(calls) == 1:
                searching.set()                     # the search starts while the import holds the model ...
                threading.Event().wait(0.2)         # ... and is waiting for it when this batch ends
            return np.ones((len(waveforms), 4), np.float32)

    m = Slow()
    segments = [np.ones(1600, np.float32)] * (16 * 20)  # an import: 20 batches
    importer = threading.Thread(target=m.embed, args=(segments,), name="import")
    search = threading.Thread(target=lambda: (searching.wait(), m.embed([np.ones(1600, np.float32)])), name="search")
    importer.start()
    search.start()
    importer.join()
    search.join()
    assert calls.count("import") == 20 and calls.count("search") == 1
    assert calls.index("search") < len(calls) - 1, "the search waited for the whole import"


def test_an_import_decodes_long_files_a_few_at_a_time():
    """An import decoded sixteen files ahead whatever their length (16 x 2 h at 44.1 kHz = 20 GB of
    mono); batches are now cut by the length the headers give."""
    from search_core.service import plan_batches

    assert plan_batches([3.0] * 40, 16, 600) == [range(0, 16), range(16, 32), range(32, 40)]
    assert plan_batches([3600.0, 3600.0, 3.0, 3.0, 700.0], 16, 600) == \
        [range(0, 1), range(1, 2), range(2, 4), range(4, 5)]
    assert plan_batches([], 16, 600) == []
