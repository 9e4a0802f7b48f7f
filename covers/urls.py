from django.urls import path

from . import apis, web

app_name = "covers"

urlpatterns = [
    path("jobs", apis.CoverJobsEndpoint.as_view(), name="jobs"),
    path("jobs/<str:job_id>", apis.CoverJobEndpoint.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/result", apis.CoverJobResultApi.as_view(), name="job-result"),
    path("jobs/<str:job_id>/artifacts/<str:name>", apis.CoverJobArtifactApi.as_view(), name="job-artifact"),
    path("jobs/<str:job_id>/cancel", apis.CoverJobCancelApi.as_view(), name="job-cancel"),
    path("models", apis.VoiceModelListApi.as_view(), name="models"),
    path("ws-token", web.WsTokenApi.as_view(), name="ws-token"),
    path("webhook-secret", apis.WebhookSecretApi.as_view(), name="webhook-secret"),
]
