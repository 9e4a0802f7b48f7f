"""Fixtures for the web tests: an in-memory channel layer for the consumer tests (the browser
test starts its own daphne + worker on channels-redis), API keys, users and job rows."""
from __future__ import annotations

import pytest


@pytest.fixture
def memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    from channels.layers import get_channel_layer

    return get_channel_layer()


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.COVER_WORK_ROOT = tmp_path / "work"


def make_key(name="test", **kwargs):
    from covers.models import APIKey

    return APIKey.objects.create_key(name=name, **kwargs)


def make_job(owner=None, user=None, **fields):
    from covers.models import CoverJob

    fields.setdefault("song", "covers/test/song.wav")
    fields.setdefault("reference_voice", "covers/test/ref.wav")
    return CoverJob.objects.create(owner=owner, user=user, **fields)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report on the test item (the browser test saves a screenshot and
    prints the server logs on failure)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
