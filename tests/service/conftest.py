"""Fixtures for the service tests: a real local Redis (TEST_REDIS_URL, default DB 15, flushed per
test), media in a temporary folder, API keys, and generated audio files."""
from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
import redis
import soundfile as sf

from tests import signals


@pytest.fixture(autouse=True)
def _redis_flushed(settings):
    url = settings.REDIS_URL
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"the tests need a Redis at {url} (start it: redis-server --daemonize yes)")
    assert not url.rstrip("/").endswith("/0"), "tests must not use Redis DB 0"
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.COVER_WORK_ROOT = tmp_path / "work"
    return settings.MEDIA_ROOT


@pytest.fixture
def redis_client(_redis_flushed):
    return _redis_flushed


def make_key(name="test", **kwargs):
    from covers.models import APIKey

    return APIKey.objects.create_key(name=name, **kwargs)


@pytest.fixture
def api_key(db):
    obj, raw = make_key("primary")
    return obj, raw


@pytest.fixture
def other_key(db):
    obj, raw = make_key("other")
    return obj, raw


@pytest.fixture
def expired_key(db):
    from django.utils import timezone

    return make_key("expired", expiry_date=timezone.now() - timedelta(minutes=1))


def wav_bytes(audio: np.ndarray, sr: int = signals.SR, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.T if audio.ndim == 2 else audio, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def song_bytes() -> bytes:
    mix, *_ = signals.song(seconds=3.0, sr=22050)
    return wav_bytes(mix, 22050)


@pytest.fixture(scope="session")
def ref_bytes() -> bytes:
    return wav_bytes(signals.reference_voice(seconds=4.0, sr=22050), 22050)


def upload(name: str, data: bytes, content_type: str = "audio/wav"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type=content_type)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the test item (the e2e tests print server logs on failure)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
