"""Jobs with registered RVC voices through the service: the API, a real RQ worker loop on the real
Redis (in this process, so the worker's engine cache can be inspected), the real loaders on tiny
random-weight models in the real formats."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from rq import SimpleWorker

from covers import voice_models
from covers.models import CoverJob, VoiceModel
from covers.queue import cover_queue, redis_connection
from inference import registry
from tests.inference.tiny_rvc_content import make_tiny_hubert_fairseq
from tests.inference.tiny_rvc_index import make_tiny_index
from tests.service.conftest import make_key
from tests.service.test_api import post_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def rvc_root(settings, tmp_path):
    from tests.inference.tiny_rvc_synth import make_tiny_rvc

    root = tmp_path / "models"
    root.mkdir()
    settings.COVER_MODELS_ROOT = root
    settings.COVER_MODELS_ALLOWED_ROOTS = []
    settings.COVER_RVC_CONTENT_ENCODER = str(make_tiny_hubert_fairseq(root / "hubert_base.pt"))
    settings.COVER_RVC_RMVPE = ""
    settings.COVER_QUALITY_REPORT = False     # measured elsewhere; keeps these jobs short
    for mid, version, sr in (("alto", "v2", 40000), ("bass", "v1", 32000)):
        (root / mid).mkdir()
        make_tiny_rvc(root / mid / f"{mid}.pth", version=version, sr=sr, seed=len(mid))
        make_tiny_index(root / mid / f"{mid}.index", 768 if version == "v2" else 256)
        voice_models.voice_model_save(model=VoiceModel(model_id=mid, name=mid, engine="rvc",
                                                       model_file=f"{mid}/{mid}.pth", index_file=f"{mid}/{mid}.index"))
    registry.clear_cache()
    yield root
    registry.clear_cache()


def run_queue():
    SimpleWorker([cover_queue()], connection=redis_connection()).work(burst=True)


def rvc_loads(root, mid) -> int:
    return registry.load_counts[("rvc-model", str((root / mid / f"{mid}.pth").resolve()))]


def cover(client, raw, song_bytes, ref_bytes, **fields) -> CoverJob:
    resp = post_job(client, raw, song_bytes, ref_bytes, **fields)
    assert resp.status_code == 201, resp.content
    return CoverJob.objects.get(pk=resp.json()["job_id"])


def test_a_job_with_a_registered_rvc_voice_succeeds_and_two_jobs_load_it_once(client, rvc_root, song_bytes,
                                                                                ref_bytes):
    _, raw = make_key("k")
    first = cover(client, raw, song_bytes, ref_bytes, model_id="alto", pitch_shift="2", index_rate="0.5")
    run_queue()
    second = cover(client, raw, song_bytes, ref_bytes, model_id="alto")
    run_queue()
    for job in (first, second):
        job.refresh_from_db()
        assert job.status == "succeeded", job.error_message
    infer = first.report["stages"]["infer"]
    assert infer["model"] == "alto.pth" and infer["model_version"] == "v2" and infer["index_used"] is True
    assert infer["index_rate"] == 0.5
    second_info = second.report["stages"]["infer"]
    assert second_info["model_cached"] is True
    assert rvc_loads(rvc_root, "alto") == 1
    resp = client.get(f"/api/v1/cover/jobs/{first.id}/result", HTTP_X_API_KEY=raw)
    assert resp.status_code == 200
    audio, sr = sf.read(io.BytesIO(b"".join(resp.streaming_content)))
    assert len(audio) / sr == pytest.approx(3.0, abs=0.05) and np.all(np.isfinite(audio))
    conv = client.get(f"/api/v1/cover/jobs/{first.id}/artifacts/converted_vocals", HTTP_X_API_KEY=raw)
    vocal, _ = sf.read(io.BytesIO(b"".join(conv.streaming_content)))
    assert np.sqrt(np.mean(vocal ** 2)) > 1e-4          # the voice model sang something


@pytest.fixture(scope="module")
def short_song_bytes() -> bytes:
    from tests import signals
    from tests.service.conftest import wav_bytes

    mix, *_ = signals.song(seconds=2.0, sr=22050)
    return wav_bytes(mix, 22050)


@pytest.mark.parametrize("cache_size,expected", [(2, {"alto": 1, "bass": 1}), (1, {"alto": 2, "bass": 1})])
def test_two_voices_alternate_under_the_lru(client, rvc_root, short_song_bytes, ref_bytes, settings, cache_size,
                                            expected):
    settings.COVER_RVC_CACHE_SIZE = cache_size
    _, raw = make_key("k")
    for mid in ("alto", "bass", "alto"):
        cover(client, raw, short_song_bytes, ref_bytes, model_id=mid)
        run_queue()
    assert sorted(CoverJob.objects.values_list("status", flat=True)) == ["succeeded"] * 3
    assert {mid: rvc_loads(rvc_root, mid) for mid in ("alto", "bass")} == expected


def test_test_load_runs_a_real_one_second_inference(rvc_root):
    model = VoiceModel.objects.get(model_id="alto")
    assert voice_models.run_voice_model_test(model.pk) == "ok"
    model.refresh_from_db()
    assert model.last_test_ok is True and model.last_test_seconds > 0
    assert "converted 1 s of a test tone with alto.pth" in model.last_test_message
    # a voice whose file broke after registration fails its test with the reason
    (rvc_root / "bass" / "bass.pth").write_bytes(b"truncated")
    bass = VoiceModel.objects.get(model_id="bass")
    assert voice_models.run_voice_model_test(bass.pk) == "failed"
    bass.refresh_from_db()
    assert bass.last_test_ok is False and "bass.pth" in bass.last_test_message


def test_a_missing_content_encoder_fails_the_job_naming_the_file(client, rvc_root, song_bytes, ref_bytes, settings):
    settings.COVER_RVC_CONTENT_ENCODER = str(rvc_root / "nowhere" / "hubert_base.pt")
    _, raw = make_key("k")
    job = cover(client, raw, song_bytes, ref_bytes, model_id="alto")
    run_queue()
    job.refresh_from_db()
    assert job.status == "failed" and job.stage == "infer"
    assert "hubert_base.pt" in job.error_message, job.error_message
    assert json.dumps(job.error_message).count("Traceback") == 0


def test_a_job_with_registered_uvr_separator_and_karaoke_models(client, rvc_root, song_bytes, ref_bytes, settings):
    from tests.inference import tiny_uvr

    uvr = rvc_root / "uvr"
    settings.COVER_UVR_MODEL_DIR = uvr
    mdx = tiny_uvr.build_mdx(uvr)
    kara = tiny_uvr.build_vr(uvr, "tiny_karaoke.pth", is_karaoke=True, seed=3)
    for mid, path, step in (("mdx", mdx, "separate"), ("kara", kara, "karaoke")):
        voice_models.voice_model_save(model=VoiceModel(model_id=mid, name=mid, engine="uvr", step=step,
                                                       model_file=str(path.relative_to(rvc_root))))
    _, raw = make_key("k")
    job = cover(client, raw, song_bytes, ref_bytes, model_id="alto", separator_model="mdx", karaoke_model="kara")
    run_queue()
    job.refresh_from_db()
    assert job.status == "succeeded", job.error_message
    sep = job.report["stages"]["separate"]
    assert sep["name"] == "uvr" and sep["chain"]["ran"] == ["karaoke"]
    assert sep["chain"]["backing"] == "mixed into the instrumental, unconverted"
    resp = client.get(f"/api/v1/cover/jobs/{job.id}", HTTP_X_API_KEY=raw).json()
    assert resp["engines"]["separator"]["chain"]["karaoke"]["name"] == "uvr"
    assert resp["engines"]["converter"]["model"] == "alto.pth"
