"""The product on a real Milvus standalone server (what users who outgrow one process run)."""
from __future__ import annotations

from dataclasses import replace

from conftest import make_settings


def test_a_process_sees_its_own_writes_on_the_server(tmp_path, clips, milvus_uri):
    """Right after an ingest the same process counts and finds what it wrote (Milvus' default
    Bounded consistency would show an empty collection for a while)."""
    from search_core.service import LibraryService

    svc = LibraryService(replace(make_settings(tmp_path), milvus_uri=milvus_uri))
    try:
        rep = svc.ingest_files(clips, "mfcc_stats")
        assert len(rep.added) == len(clips)
        assert svc.vectors.count("mfcc_stats") == len(clips)
        res = svc.search(clips[3], "mfcc_stats", k=3)
        assert res.hits and res.hits[0].clip.original_name == clips[3].name
        assert res.hits[0].score > 0.999
    finally:
        svc.close()


def test_the_server_keeps_the_library_across_a_crash(tmp_path, clips, milvus_server, milvus_uri):
    """kill -9 of the server, then a restart on the same data: every clip is still searchable."""
    from search_core.service import LibraryService

    settings = replace(make_settings(tmp_path), milvus_uri=milvus_uri)
    svc = LibraryService(settings)
    try:
        svc.ingest_files(clips[:4], "mfcc_stats")
    finally:
        svc.close()
    milvus_server.restart()
    svc = LibraryService(settings)
    try:
        assert svc.check()["rows_without_vectors"] == 0
        assert svc.search(clips[2], "mfcc_stats", k=1).hits[0].clip.original_name == clips[2].name
    finally:
        svc.close()


def test_a_collection_released_on_the_server_is_loaded_again(tmp_path, clips, milvus_uri):
    """A collection the server no longer holds in memory (released by an operator, or after a
    restart) is loaded again by the next search, count or lookup instead of failing."""
    from pymilvus import MilvusClient

    from search_core.service import LibraryService

    svc = LibraryService(replace(make_settings(tmp_path), milvus_uri=milvus_uri))
    other = MilvusClient(milvus_uri)
    try:
        svc.ingest_files(clips[:4], "mfcc_stats")
        other.release_collection("audio_mfcc_stats")
        assert svc.search(clips[1], "mfcc_stats", k=1).hits[0].clip.original_name == clips[1].name
        other.release_collection("audio_mfcc_stats")
        assert svc.vectors.count("mfcc_stats") == 4
        other.release_collection("audio_mfcc_stats")
        assert svc.check()["rows_without_vectors"] == 0
    finally:
        other.close()
        svc.close()


def test_search_asks_once_whether_a_collection_exists_and_survives_its_drop_elsewhere(tmp_path, clips, milvus_uri):
    """Each search used to ask the server whether the model's collection exists first (a round trip
    per search); now it asks once. A collection another process drops since answers with no hits,
    not an error, and the next search asks again."""
    from search_core.service import LibraryService
    from search_core.vectors import VectorStore

    svc = LibraryService(replace(make_settings(tmp_path), milvus_uri=milvus_uri))
    other = VectorStore(milvus_uri)  # another process' client
    try:
        svc.ingest_files(clips[:4], "mfcc_stats")
        asked = []
        real = svc.vectors.client.has_collection
        svc.vectors.client.has_collection = lambda *a, **kw: asked.append(a) or real(*a, **kw)
        for clip in clips[:4]:
            assert svc.search(clip, "mfcc_stats", k=1).hits[0].clip.original_name == clip.name
        assert asked == []
        other.drop("mfcc_stats")
        assert svc.search(clips[0], "mfcc_stats", k=1).hits == []
        assert svc.search(clips[0], "mfcc_stats", k=1).hits == []
        assert len(asked) == 1  # asked again once it was gone, not on every search since
    finally:
        other.close()
        svc.close()
