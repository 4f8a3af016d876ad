"""The page a newcomer meets (issue 16), through gradio_client on the launched app: a model without
weights is explained with the exact files, folders and URLs the README promises; and the path
shortening that keeps uploads' temp folders off the page leaves those alone."""
from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from apphelpers import running_app
from conftest import sound, write_wav


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app with no downloadable weights (offline, empty weights folder and PaddleSpeech home)."""
    root = tmp_path_factory.mktemp("page-app")
    env = {"WEIGHTS_DIR": str(root / "weights"), "PPSPEECH_HOME": str(root / "ppspeech"),
           "DEFAULT_SOUND_MODEL": "mfcc_stats"}
    with running_app(root / "data", env=env) as url:
        yield url, root


def test_missing_weights_message_names_the_exact_files_folders_and_urls(app, tmp_path, monkeypatch):
    from search_core.models.paddlespeech_weights import RELEASES, expected_places

    url, root = app
    query = write_wav(tmp_path / "query.wav", sound(1))
    with pytest.raises(Exception) as err:
        Client(url, verbose=False).predict(handle_file(str(query)), "panns_cnn14", 3, api_name="/search")
    msg = str(err.value)
    monkeypatch.setenv("PPSPEECH_HOME", str(root / "ppspeech"))
    places = expected_places(RELEASES["panns_cnn14"], root / "weights")  # what the app's model says
    assert "https://bj.bcebos.com/paddleaudio/models/panns_cnn14.pdparams" in msg, msg
    assert "https://paddlespeech.cdn.bcebos.com/cls/panns_cnn14.tar.gz" in msg, msg
    assert f"in {root / 'weights'} or in {root / 'ppspeech' / 'models' / 'panns'}" in msg, msg
    assert f"or in a folder under {root / 'ppspeech' / 'models' / 'panns_cnn14-32k' / '1.0'}" in msg, msg
    assert places in msg, msg
    assert "\n" not in msg.strip()


def test_public_message_cuts_upload_paths_but_keeps_urls_and_install_folders(tmp_path):
    import tempfile

    from app import public_message
    from search_core.models import WeightsNotInstalled

    upload = f"{tempfile.gettempdir()}/gradio/ab12cd/my clip.wav"
    assert public_message(f"bad data: '{upload}'") == "bad data: my clip.wav"
    assert public_message("a.wav: not readable ([Errno 5] bad data: '/tmp/gradio/ab12/a.wav')") == \
        "a.wav: not readable (bad data: a.wav)"
    # a URL is not a path
    text = "could not fetch https://example.org/models/x/model.tar.gz (timed out)"
    assert public_message(OSError(text)) == text
    # the weights message is written for the reader: every folder stays whole, also under /tmp
    weights = WeightsNotInstalled(f"x weights not installed: put x.pdparams (from https://h.example/m/x.pdparams) "
                                  f"in {tmp_path}/weights or in {tmp_path}/ppspeech/models/x-32k/1.0")
    assert public_message(weights) == str(weights)
