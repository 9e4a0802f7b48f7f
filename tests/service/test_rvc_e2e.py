"""End to end with a registered RVC voice: a real web server and a real `manage.py rqworker`
process, a tiny random-weight RVC v2 voice + .index + a fairseq-format content encoder + RMVPE
registered through the service's own registry. Two jobs: both succeed, the worker loads the voice
once (the second job's report says the model came from the worker's cache)."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
import soundfile as sf

from tests import signals
from tests.processes import Stack, e2e_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(e2e_database, django_db_blocker, tmp_path_factory):
    from django.conf import settings

    import redis as redis_lib

    from tests.inference.tiny_rvc_content import make_tiny_hubert_fairseq, make_tiny_rmvpe
    from tests.inference.tiny_rvc_index import make_tiny_index
    from tests.inference.tiny_rvc_synth import make_tiny_rvc

    tmp = tmp_path_factory.mktemp("rvc-e2e")
    models = tmp / "models"
    (models / "alto").mkdir(parents=True)
    make_tiny_rvc(models / "alto" / "alto.pth", version="v2", sr=40000)
    make_tiny_index(models / "alto" / "alto.index", 768)
    make_tiny_hubert_fairseq(models / "hubert_base.pt")
    make_tiny_rmvpe(models / "rmvpe.pt")
    redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()
    env = e2e_env(tmp, COVER_MODELS_ROOT=str(models), COVER_QUALITY_REPORT="false")
    with django_db_blocker.unblock(), pytest.MonkeyPatch.context() as mp:
        from covers import voice_models
        from covers.models import APIKey, VoiceModel

        mp.setattr(settings, "COVER_MODELS_ROOT", models)
        key, raw = APIKey.objects.create_key(name="rvc-e2e")
        voice_models.voice_model_save(model=VoiceModel(model_id="alto", name="Alto", engine="rvc",
                                                       model_file="alto/alto.pth", index_file="alto/alto.index"))
    s = Stack(tmp, env)
    s.raw = raw
    try:
        s.start()
        yield s
    finally:
        s.stop()
        with django_db_blocker.unblock():
            from covers.models import APIKey, CoverJob, VoiceModel
            CoverJob.objects.all().delete()
            VoiceModel.objects.all().delete()
            APIKey.objects.all().delete()
        redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()


def _create(stack, song, ref, **fields) -> str:
    with open(song, "rb") as s, open(ref, "rb") as r:
        resp = requests.post(stack.base + "/api/v1/cover/jobs", headers={"X-API-Key": stack.raw},
                             files={"song": ("song.wav", s, "audio/wav"), "reference_voice": ("ref.wav", r, "audio/wav")},
                             data=fields, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["job_id"]


def _wait(stack, job_id, timeout=240.0) -> dict:
    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}", headers={"X-API-Key": stack.raw},
                            timeout=30).json()
        if body.get("status") in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"timed out: {body}\n{stack.logs()}")


def test_rvc_voice_jobs_succeed_and_the_worker_loads_the_voice_once(stack, tmp_path):
    mix, *_ = signals.song(seconds=3.0)
    song = signals.write(tmp_path / "song.wav", mix)
    ref = signals.write(tmp_path / "ref.wav", signals.reference_voice(seconds=4.0))
    models = requests.get(stack.base + "/api/v1/cover/models", headers={"X-API-Key": stack.raw}, timeout=30).json()
    alto = models["results"][0]
    assert (alto["model_id"], alto["kind"], alto["version"], alto["sample_rate"]) == ("alto", "rvc", "v2", 40000)
    infos = []
    for fields in ({"model_id": "alto", "pitch_shift": "-2"}, {"model_id": "alto", "f0_method": "rmvpe"}):
        job_id = _create(stack, song, ref, **fields)
        body = _wait(stack, job_id)
        assert body["status"] == "succeeded", (body, stack.logs())
        resp = requests.get(f"{stack.base}/api/v1/cover/jobs/{job_id}/result", headers={"X-API-Key": stack.raw},
                            timeout=30)
        audio, sr = sf.read(io.BytesIO(resp.content))
        assert resp.status_code == 200 and abs(len(audio) / sr - 3.0) < 0.05 and np.all(np.isfinite(audio))
        infos.append(body)
    stages = [b["engines"]["converter"] for b in infos]
    assert stages[0]["model"] == "alto.pth" and stages[0]["model_cached"] is False
    assert stages[1]["model_cached"] is True and stages[1]["f0_method"] == "rmvpe"
