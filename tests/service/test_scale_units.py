"""Queues per device class (routing of engines to queues) and the service's stem cache over
Django storage (hits, misses, expiry, counted and deleted by the cleanup)."""
from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from rq import Queue

from covers.models import CoverJob
from covers.queue import cover_queue, queue_for_engines, queue_for_job, redis_connection
from covers.stem_cache import StorageStemCache
from tests.service.conftest import upload

GPU_ROUTES = {"demucs": "cover-gpu", "gpt-sovits-api": "cover-gpu", "world": "cover-cpu", "spectral": "cover-cpu"}


@pytest.fixture
def routed(settings):
    settings.COVER_ENGINE_QUEUES = dict(GPU_ROUTES)
    settings.COVER_QUEUES = ["cover-gpu", "cover-cpu", "cover"]
    return settings


@pytest.mark.parametrize("engines, queue", [
    (("demucs", "world"), "cover-gpu"),            # one engine needs a GPU: the GPU queue
    (("spectral", "gpt-sovits-api"), "cover-gpu"),
    (("spectral", "world"), "cover-cpu"),
    (("spectral", "unrouted-engine"), "cover-cpu"),
    (("other", "unrouted-engine"), "cover"),        # nothing routed: the default queue
    ((None, "world"), "cover-cpu"),                 # stems provided: no separator
])
def test_engines_route_to_their_device_class(routed, engines, queue):
    assert queue_for_engines(*engines) == queue


def test_without_routing_everything_goes_to_the_default_queue(settings):
    settings.COVER_ENGINE_QUEUES = {}
    assert settings.COVER_QUEUE_NAME == "cover"
    assert queue_for_engines("demucs", "gpt-sovits-api") == "cover"
    assert cover_queue().name == "cover"


def test_settings_give_every_class_queue_a_redis_connection():
    from django.conf import settings
    for name in settings.COVER_QUEUES:
        assert name in settings.RQ_QUEUES
    assert settings.COVER_QUEUE_NAME in settings.COVER_QUEUES


@pytest.mark.django_db(transaction=True)
def test_create_enqueues_on_the_queue_its_engines_need(client, api_key, song_bytes, ref_bytes, routed):
    _, raw = api_key
    conn = redis_connection()
    for separator, converter, queue in (("demucs", "world", "cover-gpu"), ("spectral", "world", "cover-cpu")):
        data = {"song": upload("song.wav", song_bytes), "reference_voice": upload("ref.wav", ref_bytes),
                "separator": separator, "converter": converter}
        resp = client.post("/api/v1/cover/jobs", data, HTTP_X_API_KEY=raw)
        if resp.status_code == 422 and separator == "demucs":  # engine not installed here: route only
            job = CoverJob(parameters={"separator": "demucs", "converter": "world"}, song="covers/x/song.wav")
            assert queue_for_job(job) == "cover-gpu"
            continue
        assert resp.status_code == 201, resp.content
        task_id = resp.json()["task_id"]
        assert task_id in Queue(queue, connection=conn).job_ids
        others = [q for q in ("cover", "cover-gpu", "cover-cpu") if q != queue]
        assert all(task_id not in Queue(q, connection=conn).job_ids for q in others)
        job = CoverJob.objects.get(pk=resp.json()["job_id"])
        assert queue_for_job(job) == queue


# --- the stem cache over Django storage -----------------------------------------------------------
def _stems(tmp_path):
    from inference import audio
    import numpy as np
    v = audio.write_wav(tmp_path / "v.wav", np.full((2, 100), 0.25, np.float32), 44100)
    i = audio.write_wav(tmp_path / "i.wav", np.full((2, 100), -0.5, np.float32), 44100)
    return v, i


KEY = "ab" * 32


def test_storage_cache_round_trip_and_ttl(settings, tmp_path):
    settings.COVER_RESULT_TTL_HOURS = 1
    cache = StorageStemCache()
    assert cache.get(KEY, tmp_path / "d0") is None
    v, i = _stems(tmp_path)
    cache.put(KEY, v, i, {"info": {"name": "spectral", "has_vocals": True}, "warnings": []})
    assert sorted(default_storage.listdir(f"stem-cache/{KEY}")[1]) == ["instrumental.wav", "meta.json", "vocals.wav"]
    hit = cache.get(KEY, tmp_path / "d1")
    assert hit is not None and hit.meta["info"]["name"] == "spectral"
    assert hit.vocals.read_bytes() == v.read_bytes() and hit.instrumental.read_bytes() == i.read_bytes()
    cache.put(KEY, v, i, {"info": {}})  # already there: nothing changes
    assert len(default_storage.listdir(f"stem-cache/{KEY}")[1]) == 3
    with pytest.raises(ValueError):
        cache.get("../covers", tmp_path)
    old = time.time() - 2 * 3600
    os.utime(default_storage.path(f"stem-cache/{KEY}/meta.json"), (old, old))
    assert cache.get(KEY, tmp_path / "d2") is None  # older than the TTL: a miss


def test_broken_entry_is_a_miss(tmp_path):
    cache = StorageStemCache()
    v, i = _stems(tmp_path)
    cache.put(KEY, v, i, {"info": {}})
    default_storage.delete(f"stem-cache/{KEY}/vocals.wav")
    assert cache.get(KEY, tmp_path / "d") is None


@pytest.mark.django_db
def test_cleanup_deletes_and_counts_expired_stem_cache_entries(settings, tmp_path):
    from covers.cleanup import cleanup_run

    settings.COVER_RESULT_TTL_HOURS = 24
    cache = StorageStemCache()
    v, i = _stems(tmp_path)
    old_key, new_key, partial_key = "a" * 64, "b" * 64, "c" * 64
    for k in (old_key, new_key):
        cache.put(k, v, i, {"info": {}})
    with open(v, "rb") as fh:  # an entry a crashed worker left without meta.json
        from django.core.files import File
        default_storage.save(f"stem-cache/{partial_key}/vocals.wav", File(fh, name="vocals.wav"))
    t = time.time() - 25 * 3600
    for k, names in ((old_key, ("vocals.wav", "instrumental.wav", "meta.json")), (partial_key, ("vocals.wav",))):
        for n in names:
            os.utime(default_storage.path(f"stem-cache/{k}/{n}"), (t, t))
    dry = cleanup_run(trigger="command", dry_run=True)
    assert dry.stem_cache_expired == 2 and len(dry.deleted) == 4
    assert default_storage.exists(f"stem-cache/{old_key}/meta.json")
    run = cleanup_run(trigger="command")
    run.refresh_from_db()
    assert run.stem_cache_expired == 2 and run.files_deleted == 0 and run.bytes_freed > 0
    assert default_storage.listdir("stem-cache")[0] == [new_key]
    assert cache.get(new_key, tmp_path / "d") is not None
