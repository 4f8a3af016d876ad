"""Bad and odd input, generated here: each file gets a correct result or a clear one-line error
naming the file and the reason; a rejected file changes nothing; a folder import reports the bad
files and indexes the rest; limits are configurable and enforced before decoding."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import make_settings, sound, write_wav
from search_core import audio as audio_mod
from search_core.audio import AudioError
from search_core.config import get_settings
from search_core.service import LibraryService

MODEL = "mfcc_stats"
MAX_BYTES = 40_000_000      # the corpus' size limit ...
MAX_SECONDS = 30 * 60.0     # ... and duration limit (the defaults are 200 MB and 2 h)

# name -> None (indexed) or a regex the reason must match
EXPECT: dict[str, str | None] = {
    "empty.wav": r"file is empty \(0 bytes\)",
    "truncated_header.wav": r"not a readable audio file",
    "text_as.wav": r"not a readable audio file",
    "random_bytes.mp3": r"not a readable audio file",
    "random_bytes.flac": r"not a readable audio file",
    "html_page.m4a": r"not a readable audio file",
    "zero_samples.wav": r"no audio samples",
    "silence.wav": r"is silent",
    "nan_float.wav": r"NaN or infinite",
    "inf_float.wav": r"NaN or infinite",
    "one_sample.wav": r"is 0\.1 ms long; mfcc_stats needs at least 0\.1 s of audio",
    "hour_long.wav": r"is 60\.0 min long, over the 30\.0 min limit",
    "too_big.wav": r"file is 41\.0 MB, over the 40\.0 MB limit",
    "fifo.wav": r"is not a regular file",
    "locked.wav": r"not readable \(permission denied\)",
    "escape_link.wav": r"links outside the import folder; refused",
    "dangling_link.wav": r"file not found",
    "clipping.wav": None,
    "pcm_u8.wav": None,
    "pcm_24.wav": None,
    "float32_over_full_scale.wav": None,
    "six_channels.wav": None,
    "rate_8k.wav": None,
    "rate_96k.wav": None,
    "truncated_data.wav": None,       # header promises more frames than there are: decode what is there
    "dc_offset.wav": None,
    "vorbis.ogg": None,
    "lossless.flac": None,
    "-leading-dash.wav": None,
    "ünïcødé 音.wav": None,
    "inner_link.wav": None,           # a symlink that stays inside the folder is fine
}


def _write(folder: Path, name: str, y, rate=16000, **kw) -> Path:
    sf.write(str(folder / name), y, rate, **kw)
    return folder / name


def make_corpus(folder: Path, outside: Path) -> Path:
    """Write every kind of bad/odd input of :data:`EXPECT` into ``folder``."""
    folder.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    y = sound(1)
    rng = np.random.default_rng(0)
    full = _write(outside, "full.wav", y).read_bytes()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "truncated_header.wav").write_bytes(full[:30])
    (folder / "truncated_data.wav").write_bytes(full[: len(full) // 3])
    (folder / "text_as.wav").write_text("this is a text file with an audio extension\n" * 20)
    (folder / "random_bytes.mp3").write_bytes(rng.bytes(20_000))
    (folder / "random_bytes.flac").write_bytes(rng.bytes(20_000))
    (folder / "html_page.m4a").write_bytes(b"<html><body>404 not found</body></html>" * 20)
    _write(folder, "zero_samples.wav", np.zeros(0, np.float32))
    _write(folder, "silence.wav", np.zeros(32000, np.float32))
    _write(folder, "one_sample.wav", np.full(1, 0.5, np.float32))  # indexed once, and scored 0.93 against a tone
    _write(folder, "clipping.wav", np.clip(sound(2) * 20, -1, 1))
    for name, bad in (("nan_float.wav", np.nan), ("inf_float.wav", np.inf)):
        z = sound(3).copy()
        z[1000] = bad
        _write(folder, name, z, subtype="FLOAT")
    _write(folder, "pcm_u8.wav", sound(4), subtype="PCM_U8")
    _write(folder, "pcm_24.wav", sound(5), subtype="PCM_24")
    _write(folder, "float32_over_full_scale.wav", sound(6) * 5, subtype="FLOAT")
    _write(folder, "six_channels.wav", np.stack([sound(7 + c) for c in range(6)], axis=1))
    _write(folder, "rate_8k.wav", sound(8, rate=8000), 8000)
    _write(folder, "rate_96k.wav", sound(9, rate=96000), 96000)
    _write(folder, "dc_offset.wav", np.full(32000, 0.25, np.float32) + sound(10) * 0.01)
    _write(folder, "vorbis.ogg", sound(11), format="OGG")
    _write(folder, "lossless.flac", sound(12))
    _write(folder, "-leading-dash.wav", sound(13))
    _write(folder, "ünïcødé 音.wav", sound(14))
    # one hour at 8 kHz, 8-bit (28.8 MB: under the size limit, over the duration limit)
    hour = np.zeros(3600 * 8000, np.float32)
    hour[:8000] = sound(15, seconds=1.0, rate=8000)
    _write(folder, "hour_long.wav", hour, 8000, subtype="PCM_U8")
    # over the size limit (41 MB of valid audio, 21 minutes: the size is the only reason)
    _write(folder, "too_big.wav", np.tile(sound(16), 641), subtype="PCM_16")
    os.mkfifo(folder / "fifo.wav")  # opening it would block: must be refused without opening
    shutil.copy(folder / "lossless.flac", folder / "locked.wav")  # made unreadable by the `locked` fixture
    (folder / "escape_link.wav").symlink_to(_write(outside, "secret.wav", sound(17)))
    (folder / "dangling_link.wav").symlink_to(outside / "gone.wav")
    (folder / "sub").mkdir()
    (folder / "inner_link.wav").symlink_to(_write(folder / "sub", "target.wav", sound(18)))
    (folder / "dir_named.wav").mkdir()  # a directory where a file is expected (walked into)
    return folder


@pytest.fixture
def locked(monkeypatch):
    """Tests run as root, whom chmod 000 does not stop: make ``locked.wav`` unreadable to the process."""
    real_access = os.access

    def access(path, mode, *a, **kw):
        if Path(path).name == "locked.wav":
            return False
        return real_access(path, mode, *a, **kw)
    monkeypatch.setattr(os, "access", access)


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus", tmp_path / "outside")


@pytest.fixture
def svc(tmp_path):
    s = LibraryService(make_settings(tmp_path, max_upload_bytes=MAX_BYTES, max_duration_s=MAX_SECONDS))
    yield s
    s.close()


def assert_clear(message: str, name: str, reason: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"{name}: "), message
    assert re.search(reason, message), message
    assert "/tmp" not in message and "pytest" not in message, f"server path leaked: {message}"


def test_corpus_has_at_least_20_kinds():
    assert len(EXPECT) >= 20 and sum(v is not None for v in EXPECT.values()) >= 14


def test_folder_import_reports_each_bad_file_and_indexes_the_rest(svc, corpus, locked):
    rep = svc.ingest_folder(corpus, MODEL)
    got = {i.name: i for i in rep.items}
    assert set(got) == set(EXPECT) | {"target.wav"}
    for name, reason in EXPECT.items():
        item = got[name]
        if reason is None:
            assert item.status == "added", (name, item.message)
        else:
            assert item.status == "error", name
            assert_clear(item.message, name, reason)
    assert svc.check() == {k: 0 for k in svc.check()}
    indexed = {c.original_name: c for c, _ in svc.list_clips(MODEL, limit=100)}
    # the symlink and its target are the same bytes: one clip
    assert set(indexed) == {n for n, r in EXPECT.items() if r is None}
    assert got["target.wav"].status == "exists"
    assert indexed["six_channels.wav"].channels == 6
    assert (indexed["rate_8k.wav"].sample_rate, indexed["rate_96k.wav"].sample_rate) == (8000, 96000)
    assert indexed["truncated_data.wav"].duration_s == pytest.approx(2.0 / 3, abs=0.01)
    # nothing outside the folder was read into the library
    assert not any(c.sha256 == audio_mod.sha256_of(corpus.parent / "outside" / "secret.wav")
                   for c in indexed.values())
    # each indexed odd file is found by itself
    for name in ("pcm_u8.wav", "rate_96k.wav", "float32_over_full_scale.wav", "-leading-dash.wav"):
        assert svc.search(corpus / name, MODEL, k=1).hits[0].clip.original_name == name
    again = svc.ingest_folder(corpus, MODEL)
    assert not again.added and len(again.errors) == len(rep.errors)


def test_each_rejected_file_alone_raises_one_clear_line_and_changes_nothing(svc, corpus, locked):
    svc.ingest_file(corpus / "lossless.flac", MODEL)
    before = (svc.count(), sorted(p.name for p in svc.library_dir.iterdir()), svc.vectors.count(MODEL))
    for name, reason in EXPECT.items():
        if reason is None or "link" in name:
            continue
        with pytest.raises(AudioError) as info:
            svc.ingest_file(corpus / name, MODEL)
        assert_clear(str(info.value), name, reason)
        assert (svc.count(), sorted(p.name for p in svc.library_dir.iterdir()), svc.vectors.count(MODEL)) == before
    with pytest.raises(AudioError, match=r"^dir_named\.wav: is a directory"):
        svc.ingest_file(corpus / "dir_named.wav", MODEL)
    # a bad query gets the same clear error
    with pytest.raises(AudioError, match=r"^silence\.wav: is silent"):
        svc.search(corpus / "silence.wav", MODEL)
    assert svc.check() == {k: 0 for k in svc.check()}


def test_uploaded_names_never_become_paths(svc, tmp_path):
    src = [write_wav(tmp_path / f"u{i}.wav", sound(20 + i)) for i in range(4)]
    names = ["../../etc/passwd.wav", "C:\\Windows\\evil.wav", "/abs/olute.wav", "-rf --no-preserve-root.wav"]
    rep = svc.ingest_files(src, MODEL, names=names)
    assert [i.name for i in rep.items] == ["passwd.wav", "evil.wav", "olute.wav", "-rf --no-preserve-root.wav"]
    stored = sorted(p.name for p in svc.library_dir.iterdir())
    assert all(re.fullmatch(r"[0-9a-f]{64}\.wav", n) for n in stored) and len(stored) == 4
    assert not (tmp_path / "etc").exists()


def test_manifest_entry_that_is_a_directory_or_missing_is_reported(svc, tmp_path):
    folder = tmp_path / "m"
    write_wav(folder / "ok.wav", sound(30))
    (folder / "adir.wav").mkdir()
    (folder / "manifest.csv").write_text("path,label\nok.wav,good\nadir.wav,x\nmissing.wav,y\n")
    rep = svc.ingest_folder(folder, MODEL, manifest=folder / "manifest.csv")
    assert {i.name: i.status for i in rep.items} == {"ok.wav": "added", "adir.wav": "error", "missing.wav": "error"}
    assert {i.name: i.message for i in rep.errors} == {"adir.wav": "adir.wav: is a directory, not an audio file",
                                                       "missing.wav": "missing.wav: file not found"}


def test_limits_are_checked_before_decoding(tmp_path, monkeypatch):
    """Oversized and overlong files are refused from their size and header alone."""
    folder = tmp_path / "in"
    folder.mkdir()
    hour = np.zeros(3600 * 8000, np.float32)
    hour[:800] = 0.5
    _write(folder, "hour.wav", hour, 8000, subtype="PCM_U8")
    _write(folder, "big.wav", np.tile(sound(1), 20))

    def no_decode(*a, **kw):
        raise AssertionError("decoded a file that is over a limit")
    monkeypatch.setattr(audio_mod, "blocks", no_decode)
    with pytest.raises(AudioError, match=r"^hour\.wav: is 60\.0 min long, over the 30\.0 min limit$"):
        audio_mod.load(folder / "hour.wav", 16000, max_duration_s=1800)
    with pytest.raises(AudioError, match=r"^big\.wav: file is 1\.3 MB, over the 1\.0 MB limit$"):
        audio_mod.load(folder / "big.wav", 16000, max_bytes=1_000_000)
    # with the default limits the hour-long file passes both checks (it would be indexed as segments)
    s = get_settings()
    assert audio_mod.check_file(folder / "hour.wav", s.max_upload_bytes) == (folder / "hour.wav").stat().st_size
    assert audio_mod.probe(folder / "hour.wav").duration_s == pytest.approx(3600)
    assert audio_mod.probe(folder / "hour.wav").duration_s <= s.max_duration_s


def test_limits_come_from_the_environment_with_sane_defaults(monkeypatch):
    for var in ("MAX_UPLOAD_BYTES", "MAX_DURATION_S"):
        monkeypatch.delenv(var, raising=False)
    s = get_settings()
    assert s.max_upload_bytes == 200 * 1024 * 1024 and s.max_duration_s == 7200
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1048576")
    monkeypatch.setenv("MAX_DURATION_S", "90")
    s = get_settings()
    assert (s.max_upload_bytes, s.max_duration_s) == (1048576, 90.0)
    monkeypatch.setenv("MAX_DURATION_S", "ten")
    with pytest.raises(ValueError, match=r"MAX_DURATION_S='ten' is not a number"):
        get_settings()


def test_limits_from_settings_reach_ingest_and_search(tmp_path):
    f = write_wav(tmp_path / "two_seconds.wav", sound(1))  # 64 kB, 2 s
    for sub, limits, message in (
            ("a", dict(max_upload_bytes=50_000), "two_seconds.wav: file is 64.0 kB, over the 50.0 kB limit"),
            ("b", dict(max_duration_s=1.5), "two_seconds.wav: is 2.0 s long, over the 1.5 s limit")):
        svc = LibraryService(make_settings(tmp_path / sub, **limits))
        try:
            assert svc.ingest_files([f], MODEL).errors[0].message == message
            with pytest.raises(AudioError, match="over the"):
                svc.search(f, MODEL)
            assert svc.count() == 0
        finally:
            svc.close()
