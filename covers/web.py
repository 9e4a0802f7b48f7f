"""The browser side: log in (django.contrib.auth's views), the cover page, and the signed
WebSocket token endpoint.

The page is a server-rendered template plus plain JavaScript (covers/static/covers/app.js): it
creates jobs through the REST API with the session (covers.auth.StaffSessionAuthentication: a
staff user or a user who owns a usable API key; CSRF enforced) and follows them over
``ws/cover/jobs/...`` with the same session.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import path
from django.views.decorators.csrf import ensure_csrf_cookie
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .auth import Caller
from .models import CoverJob
from .ws_auth import TOKEN_MAX_AGE_SECONDS, session_user_allowed, ws_token_issue

LOGIN_URL = "/accounts/login/"  # Django's default settings.LOGIN_URL


@login_required(login_url=LOGIN_URL)
@ensure_csrf_cookie
def cover_page(request):
    return render(request, "covers/index.html", {
        "allowed": session_user_allowed(request.user),
        "stages": CoverJob.Stage.choices,
        "max_upload_mb": settings.COVER_MAX_UPLOAD_MB,
        "min_reference_seconds": settings.COVER_MIN_REFERENCE_SECONDS,
        "max_reference_seconds": settings.COVER_MAX_REFERENCE_SECONDS,
    })


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    next_page = "/"
    redirect_authenticated_user = True


class WsTokenApi(APIView):
    """A short-lived signed token for ``?token=`` on the WebSocket URLs (browsers cannot send the
    X-API-Key header, and the raw key must never travel in a URL)."""

    @extend_schema(operation_id="cover_ws_token", request=None, summary="A WebSocket token (valid 5 minutes)",
                   responses={200: inline_serializer("WsToken", fields={
                       "token": serializers.CharField(), "expires_in": serializers.IntegerField(),
                       "jobs_url": serializers.CharField(), "job_url_template": serializers.CharField()})})
    def post(self, request):
        token = ws_token_issue(caller=Caller.from_request(request))
        return Response({"token": token, "expires_in": TOKEN_MAX_AGE_SECONDS,
                         "jobs_url": "/ws/cover/jobs/", "job_url_template": "/ws/cover/jobs/{job_id}/"})


urlpatterns = [
    path("", cover_page, name="cover-page"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page=LOGIN_URL), name="logout"),
]
