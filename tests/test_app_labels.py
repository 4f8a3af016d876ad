"""Labels per file in one upload (issue 16, item 8): typed per file, from a manifest CSV read by the
folder import's reader, or the batch's common fields, in that order, field by field."""
from __future__ import annotations

import pytest

from search_core.ui import labels


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("path,label,speaker,source,tags\n"
                    "sub/cat.wav,cat,,garden,pet;indoor\n"
                    "dog.wav,dog,Rex,,\n")
    return path


def test_each_file_gets_its_row_then_the_manifest_then_the_common_fields(manifest):
    paths = ["/tmp/gradio/a1/cat.wav", "/tmp/gradio/b2/dog.wav", "/tmp/gradio/c3/bird.wav"]
    common = {"label": "animal", "speaker": "", "tags": ["batch"]}
    rows = [["cat.wav", "", "", "", ""], ["dog.wav", "puppy", "", "", "loud, small"], ["bird.wav", "bird", "", "", ""]]
    meta = labels.per_file_metadata(paths, common, rows, str(manifest))
    assert meta[0] == {"label": "cat", "speaker": None, "source": "garden", "tags": ["pet", "indoor"]}
    assert meta[1] == {"label": "puppy", "speaker": "Rex", "source": None, "tags": ["loud", "small"]}
    assert meta[2] == {"label": "bird", "speaker": None, "source": None, "tags": ["batch"]}
    # without a table (an API client) the manifest and the common fields still apply
    assert [m["label"] for m in labels.per_file_metadata(paths, common, None, str(manifest))] == \
        ["cat", "dog", "animal"]


def test_the_rows_offered_after_choosing_files_show_what_the_manifest_says(manifest):
    rows = labels.label_rows(["/tmp/gradio/a1/cat.wav", "/tmp/gradio/c3/bird.wav"], str(manifest))
    assert rows == [["cat.wav", "cat", "", "garden", "pet, indoor"], ["bird.wav", "", "", "", ""]]


def test_a_manifest_without_a_path_column_is_a_sentence(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\ncat.wav,cat\n")
    with pytest.raises(ValueError, match=r"^bad\.csv: a manifest needs a 'path' column$"):
        labels.label_rows(["/tmp/x/cat.wav"], str(bad))


def test_a_label_over_its_bound_is_refused_with_a_sentence():
    with pytest.raises(ValueError, match="label"):
        labels.per_file_metadata(["/tmp/x/cat.wav"], {}, [["cat.wav", "x" * 10_000, "", "", ""]])
