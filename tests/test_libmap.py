"""The library map: the projection (pure: fitted, placed, saved) and the service's cached map of a library."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ENGINE_STORES, sound, write_wav
from search_core import projection as P


def clusters(n_per: int, k: int = 3, dim: int = 64, spread: float = 0.35, seed: int = 0):
    """``k`` well-separated groups of ``n_per`` unit vectors; returns (vectors, group of each)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    groups = np.repeat(np.arange(k), n_per)
    return P.unit_rows(centres[groups] + spread * rng.standard_normal((len(groups), dim))), groups


def agreement(xy: np.ndarray, groups: np.ndarray, k: int = 5) -> float:
    """Share of each point's ``k`` nearest points on the map that are in its group."""
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(len(xy)) * 1e9
    nn = np.argsort(d, axis=1)[:, :k]
    return float((groups[nn] == groups[:, None]).mean())


def positions(proj, ids) -> np.ndarray:
    return np.array([proj.positions[int(i)] for i in ids])


def test_groups_of_similar_vectors_are_groups_on_the_map():
    x, g = clusters(40)
    proj = P.fit("m", np.arange(1, 121), x)
    xy = positions(proj, np.arange(1, 121))
    assert agreement(xy, g) > 0.95
    assert np.abs(xy).max() <= 1.0 + 1e-6 and proj.fitted_on == 120


def test_the_same_clips_give_the_same_map_in_any_order():
    x, _ = clusters(20)
    ids = np.arange(10, 70)
    a = P.fit("m", ids, x)
    order = np.random.default_rng(1).permutation(len(ids))
    b = P.fit("m", ids[order], x[order])
    assert a.positions == b.positions


def test_no_clip_is_a_sentence_and_one_two_or_three_clips_are_drawn():
    with pytest.raises(ValueError, match="no clips to draw for m: add some first"):
        P.fit("m", [], np.zeros((0, 8)))
    x, _ = clusters(1, k=3)
    one = P.fit("m", [7], x[:1])
    assert one.positions == {7: (0.0, 0.0)}
    two = P.fit("m", [1, 2], x[:2])
    a, b = np.array(two.positions[1]), np.array(two.positions[2])
    assert np.linalg.norm(a - b) > 1.0  # apart, within the box
    three = P.fit("m", [1, 2, 3], x)
    assert len({three.positions[i] for i in (1, 2, 3)}) == 3
    with pytest.raises(ValueError, match="2 clip ids for 3 vectors"):
        P.fit("m", [1, 2], x)


def test_new_clips_are_placed_among_their_kind_without_moving_anything():
    x, g = clusters(30, seed=2)
    proj = P.fit("m", np.arange(90), x)
    before = dict(proj.positions)
    landmarks = proj.landmark_xy.copy()
    rng = np.random.default_rng(5)
    # new vectors near group 1's members: they land among group 1 on the map
    new = P.unit_rows(x[g == 1][:5] + 0.05 * rng.standard_normal((5, x.shape[1])))
    xy = P.place(proj, new)
    old = positions(proj, np.arange(90))
    for p in xy:
        nearest = np.argsort(((old - p) ** 2).sum(1))[:5]
        assert (g[nearest] == 1).all()
    assert proj.positions == before and np.array_equal(proj.landmark_xy, landmarks)
    with pytest.raises(ValueError, match="3-d vectors for a map of 64-d embeddings"):
        P.place(proj, np.ones((1, 3)))


def test_a_large_library_is_fitted_on_landmarks_and_the_rest_placed():
    x, g = clusters(100, k=4, seed=3)
    proj = P.fit("m", np.arange(400), x, landmarks=60)
    assert len(proj.landmark_ids) == 60 and len(proj.positions) == 400
    assert agreement(positions(proj, np.arange(400)), g) > 0.9


def test_refit_when_the_library_grew_or_lost_its_landmarks():
    x, _ = clusters(20)
    proj = P.fit("m", np.arange(60), x)
    assert not P.needs_refit(proj, range(60))
    assert not P.needs_refit(proj, range(74))          # grew by less than a quarter
    assert P.needs_refit(proj, range(75))
    assert P.needs_refit(proj, range(100, 130))        # dropped and filled again: other clips
    one = P.fit("m", [1], x[:1])
    assert P.needs_refit(one, [1, 2])                  # a map of one clip is fitted again for the second


def test_saved_and_loaded_whole(tmp_path):
    x, _ = clusters(10)
    proj = P.fit("m", np.arange(30), x)
    path = tmp_path / "maps" / "m.npz"
    P.save(proj, path)
    back = P.load(path, "m")
    assert back.positions == proj.positions and back.fitted_on == 30
    assert np.array_equal(back.landmark_vecs, proj.landmark_vecs)
    assert [p.name for p in path.parent.iterdir()] == ["m.npz"]  # no temporary file left
    assert P.load(path, "other") is None
    path.write_bytes(b"half a file")
    assert P.load(path, "m") is None
    assert P.load(tmp_path / "none.npz", "m") is None


MODEL = "mfcc_stats"


@pytest.mark.stores(*ENGINE_STORES)
def test_the_service_caches_the_map_and_places_clips_added_since(service, tmp_path):
    with pytest.raises(ValueError, match=f"No clips for {MODEL} yet"):
        service.library_map(MODEL)
    rng = np.random.default_rng(0)
    files, labels = [], []
    for kind in range(3):
        for t in range(6):
            y = sound(kind) + 0.02 * rng.standard_normal(32000).astype(np.float32)
            files.append(write_wav(tmp_path / "in" / f"k{kind}_{t}.wav", y))
            labels.append(f"kind{kind}")
    service.ingest_files(files[:-1], MODEL, metadata=[{"label": lab} for lab in labels[:-1]])
    m = service.library_map(MODEL)
    assert len(m) == 17 and m.refitted and m.fitted_on == 17
    assert (service.settings.data_dir / "maps" / f"{MODEL}.npz").is_file()
    first = {c.id: tuple(p) for c, p in zip(m.clips, m.xy)}

    item = service.ingest_file(files[-1], MODEL, label=labels[-1])
    m2 = service.library_map(MODEL)
    assert len(m2) == 18 and not m2.refitted and m2.placed == 1 and m2.fitted_on == 17
    assert all(first[c.id] == tuple(p) for c, p in zip(m2.clips, m2.xy) if c.id in first)
    assert service.delete_clip(m.clips[0].id)
    m3 = service.library_map(MODEL)
    assert len(m3) == 17 and m3.placed == 0 and m.clips[0].id not in {c.id for c in m3.clips}
    assert service.library_map(MODEL, refit=True).refitted

    hits = service.search_clip(item.clip_id, MODEL, k=4)
    assert [h.clip.label for h in hits] == ["kind2"] * 4 and item.clip_id not in [h.clip.id for h in hits]
    with pytest.raises(KeyError, match="No clip 99999 in the library for mfcc_stats"):
        service.search_clip(99999, MODEL)
    with pytest.raises(ValueError, match="clip id"):
        service.search_clip(0, MODEL)
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        service.library_map("nope")
    assert service.clip(item.clip_id).original_name == "k2_5.wav" and service.clip(99999) is None

    # dropping the model drops its map: added again later, its clips get a map of their own
    service.drop_model(MODEL)
    assert not (service.settings.data_dir / "maps" / f"{MODEL}.npz").exists()
    with pytest.raises(ValueError, match=f"No clips for {MODEL} yet"):
        service.library_map(MODEL)


def test_the_cli_writes_the_map_as_a_csv_or_a_picture(tmp_path):
    from PIL import Image

    from conftest import cli_runner

    cli = cli_runner(tmp_path / "data")
    for kind in range(2):
        for t in range(4):
            y = sound(kind) + 0.02 * np.random.default_rng([kind, t]).standard_normal(32000).astype(np.float32)
            write_wav(tmp_path / "in" / f"k{kind}_{t}.wav", y)
    cli("ingest", str(tmp_path / "in"), "--model", MODEL)
    out = cli("map", "--model", MODEL, "--out", str(tmp_path / "map.csv"))
    assert "8 clips of mfcc_stats (fitted now on 8 clips" in out
    rows = (tmp_path / "map.csv").read_text().splitlines()
    assert rows[0] == "clip_id,name,label,x,y" and len(rows) == 9
    assert "fitted earlier, 0 clip(s) placed since" in cli("map", "--model", MODEL, "--out", str(tmp_path / "m.png"))
    with Image.open(tmp_path / "m.png") as img:
        assert img.size == (1200, 800) and len(img.getcolors(1 << 16)) > 3  # dots and a legend, not blank
    cli("map", "--model", MODEL, "--out", str(tmp_path / "m.txt"), code=2)  # "name a .png ... or a .csv"
    assert not (tmp_path / "m.txt").exists()
