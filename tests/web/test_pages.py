"""The page, log in/out, and the page's assets."""
from __future__ import annotations

import pytest

from tests.web.conftest import make_key

pytestmark = pytest.mark.django_db


def test_the_page_needs_a_login_and_the_login_leads_back(client, django_user_model):
    django_user_model.objects.create_user("ana", password="pw-123456789", is_staff=True)
    resp = client.get("/")
    assert resp.status_code == 302 and resp["Location"].startswith("/accounts/login/?next=/")
    resp = client.post("/accounts/login/?next=/", {"username": "ana", "password": "wrong", "next": "/"})
    assert resp.status_code == 200 and b"didn't match" in resp.content
    resp = client.post("/accounts/login/", {"username": "ana", "password": "pw-123456789", "next": "/"})
    assert resp.status_code == 302 and resp["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    for needle in ('id="cover-form"', 'id="song"', 'id="reference_voice"', 'type="range"', 'min="-12"',
                   'max="12"', 'id="auto_pitch"', 'id="model_id"', 'data-stage="finalize"', "covers/app.js"):
        assert needle in html, needle
    assert "csrftoken" in page.cookies
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_a_user_without_key_or_staff_sees_why(client, django_user_model):
    user = django_user_model.objects.create_user("bob", password="pw-123456789")
    client.force_login(user)
    html = client.get("/").content.decode()
    assert "owns no usable API key" in html and 'id="cover-form"' not in html
    make_key("bob's", owner=user)
    assert 'id="cover-form"' in client.get("/").content.decode()


def test_static_assets_are_served(client, settings):
    for path in ("/static/covers/app.js", "/static/covers/app.css"):
        resp = client.get(path)
        assert resp.status_code == 200, path


def test_session_token_names_the_user(client, django_user_model):
    from covers.ws_auth import ws_token_caller

    user = django_user_model.objects.create_user("cy", password="pw-123456789", is_staff=True)
    client.force_login(user)
    # the session API enforces CSRF: the page sends X-CSRFToken from the cookie
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(user)
    assert csrf_client.post("/api/v1/cover/ws-token").status_code == 403
    csrf_client.get("/")
    token = csrf_client.cookies["csrftoken"].value
    resp = csrf_client.post("/api/v1/cover/ws-token", HTTP_X_CSRFTOKEN=token)
    assert resp.status_code == 200, resp.content
    caller = ws_token_caller(resp.json()["token"])
    assert caller.user == user and caller.api_key is None
