"""HTTP API under /api/v1/cover/: one class per operation, its serializers beside it.

Views validate input, call a service or selector, and answer; rules live in services."""
from __future__ import annotations

from django.conf import settings
from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from .auth import Caller
from .errors import Conflict, Gone, NotFound, UploadTooLarge
from .models import CoverJob
from .selectors import cover_job_get, cover_job_list
from .services import cover_job_cancel, cover_job_create, cover_job_delete
from .uploads import MB, UploadLimits

ErrorSerializer = inline_serializer("Error", fields={"error": inline_serializer("ErrorBody", fields={
    "code": serializers.CharField(), "message": serializers.CharField(),
    "field": serializers.CharField(allow_null=True)})})


def _errors(*codes: int) -> dict:
    return {c: OpenApiResponse(ErrorSerializer) for c in codes}


class CoverJobOutputSerializer(serializers.Serializer):
    job_id = serializers.UUIDField(source="id")
    task_id = serializers.CharField()
    status = serializers.ChoiceField(choices=CoverJob.Status.choices)
    stage = serializers.CharField(allow_null=True)
    progress = serializers.IntegerField(min_value=0, max_value=100)
    error_code = serializers.CharField(allow_blank=True)
    error_message = serializers.CharField(allow_blank=True)
    parameters = serializers.JSONField()
    inputs = serializers.JSONField(source="input_info")
    timings = serializers.JSONField()
    quality = serializers.JSONField(allow_null=True, help_text=(
        "After infer: pitch_accuracy (share of sung frames within 50 cents of the shifted melody), "
        "speaker_similarity (to the reference; original_similarity is the input vocal's), notes; "
        "null until measured."))
    quality_warning = serializers.BooleanField(help_text="Pitch accuracy under 85%.")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    expired_at = serializers.DateTimeField(allow_null=True, help_text="When the cleanup deleted the files.")
    links = serializers.SerializerMethodField()

    def to_representation(self, job):
        data = super().to_representation(job)
        data["stage"] = job.stage or None
        data["quality"] = job.quality or None
        return data

    def get_links(self, job) -> dict:
        request = self.context.get("request")

        def url(route, **kw):
            path = reverse(f"covers:{route}", kwargs={"job_id": job.id, **kw})
            return request.build_absolute_uri(path) if request is not None else path

        links = {"self": url("job-detail"), "cancel": url("job-cancel")}
        if job.status == CoverJob.Status.SUCCEEDED and job.expired_at is None:
            links["result"] = url("job-result")
            links["artifacts"] = {name: url("job-artifact", name=name) for name in CoverJob.ARTIFACTS
                                  if getattr(job, name)}
        return links


def _job_response(job, request, status=200, headers=None) -> Response:
    return Response(CoverJobOutputSerializer(job, context={"request": request}).data, status=status,
                    headers=headers)


class CoverJobCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        # Empty files pass here and get covers.uploads' 422 empty_audio (audio with no samples).
        song = serializers.FileField(help_text="The song (any common audio format).", allow_empty_file=True)
        reference_voice = serializers.FileField(help_text="A clean recording of the target voice (3-60 s).",
                                                allow_empty_file=True)
        model_id = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,100}$", required=False, allow_blank=True,
                                          max_length=100)
        # No defaults here: left out, they come from the model's defaults (covers.voice_models).
        pitch_shift = serializers.FloatField(required=False, min_value=-24, max_value=24,
                                             help_text="Semitones, -24..24 (default: the model's, else 0).")
        auto_pitch = serializers.BooleanField(required=False, allow_null=True, default=None,
                                             help_text="Default: the model's, else false.")
        reference_text = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
        target_text = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
        separator = serializers.CharField(required=False, allow_blank=True, max_length=64)
        converter = serializers.CharField(required=False, allow_blank=True, max_length=64)

        def _engine(self, kind: str, value: str) -> str:
            if not value:
                return value
            try:
                from inference.registry import available
                names = available(kind)
            except Exception:
                return value
            if value not in names:
                raise serializers.ValidationError(f"unknown {kind}; available: {', '.join(names)}")
            return value

        @staticmethod
        def _utf8_text(field: str, value: str) -> str:
            # Django decodes multipart fields with errors="replace": U+FFFD marks bytes that were
            # not UTF-8 (a text that means to contain U+FFFD itself is refused too, harmlessly).
            if "\ufffd" in value or "\x00" in value:
                raise serializers.ValidationError(f"{field} must be UTF-8 text (no invalid bytes, no NUL)",
                                                  code="invalid_encoding")
            return value

        def validate_reference_text(self, value):
            return self._utf8_text("reference_text", value)

        def validate_target_text(self, value):
            return self._utf8_text("target_text", value)

        def validate_separator(self, value):
            return self._engine("separator", value)

        def validate_converter(self, value):
            return self._engine("converter", value)

    @extend_schema(operation_id="cover_jobs_create", request=InputSerializer,
                   responses={201: CoverJobOutputSerializer, **_errors(400, 401, 413, 415, 422, 429, 503)},
                   summary="Create a cover job")
    def post(self, request):
        caller = Caller.from_request(request)
        limits = UploadLimits.for_key(caller.api_key)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limits.max_request_bytes:
            raise UploadTooLarge(f"the request is {length / MB:.1f} MB; each file may be at most "
                                 f"{limits.max_bytes / MB:.0f} MB")
        ser = self.InputSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        job = cover_job_create(caller=caller, **ser.validated_data)
        location = request.build_absolute_uri(reverse("covers:job-detail", kwargs={"job_id": job.id}))
        return _job_response(job, request, status=201, headers={"Location": location})


class CoverJobPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class CoverJobListApi(APIView):
    @extend_schema(operation_id="cover_jobs_list", summary="List my jobs, newest first",
                   parameters=[OpenApiParameter("status", str, description="queued|running|succeeded|failed|"
                                                "canceled (comma-separated)"),
                               OpenApiParameter("page", int), OpenApiParameter("page_size", int)],
                   responses={200: CoverJobOutputSerializer(many=True), **_errors(400, 401)})
    def get(self, request):
        qs = cover_job_list(caller=Caller.from_request(request), status=request.query_params.get("status"))
        paginator = CoverJobPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        data = CoverJobOutputSerializer(page, many=True, context={"request": request}).data
        return paginator.get_paginated_response(data)


class CoverJobDetailApi(APIView):
    @extend_schema(operation_id="cover_jobs_retrieve", summary="A job's status, stage, progress and links",
                   responses={200: CoverJobOutputSerializer, **_errors(401, 404)})
    def get(self, request, job_id):
        return _job_response(cover_job_get(job_id=job_id, caller=Caller.from_request(request)), request)


class CoverJobDeleteApi(APIView):
    @extend_schema(operation_id="cover_jobs_destroy", summary="Cancel if needed, delete files and the job",
                   responses={204: None, **_errors(401, 404)})
    def delete(self, request, job_id):
        cover_job_delete(job=cover_job_get(job_id=job_id, caller=Caller.from_request(request)))
        return Response(status=204)


class CoverJobCancelApi(APIView):
    @extend_schema(operation_id="cover_jobs_cancel", request=None, summary="Cancel (idempotent)",
                   responses={200: CoverJobOutputSerializer, **_errors(401, 404, 409)})
    def post(self, request, job_id):
        job = cover_job_get(job_id=job_id, caller=Caller.from_request(request))
        return _job_response(cover_job_cancel(job=job), request)


def _file_of(job: CoverJob, field: str, filename: str) -> FileResponse:
    if job.expired_at is not None:
        raise Gone(f"the job's files were deleted on {job.expired_at:%Y-%m-%d %H:%M} UTC, "
                   f"{settings.COVER_RESULT_TTL_HOURS:g} hours after it finished; submit the job again")
    if job.status != CoverJob.Status.SUCCEEDED:
        reason = {"queued": "the job is still queued", "running": "the job is still running",
                  "failed": "the job failed", "canceled": "the job was canceled"}[job.status]
        raise Conflict(f"{reason}; files are available once it has succeeded", code="not_ready")
    f = getattr(job, field)
    if not f:
        raise NotFound(f"this job has no {field} file", field="name")
    try:
        fh = f.open("rb")
    except FileNotFoundError:
        raise NotFound(f"the {field} file is gone (expired or purged)", code="gone") from None
    return FileResponse(fh, as_attachment=True, filename=filename, content_type="audio/wav")


class CoverJobResultApi(APIView):
    @extend_schema(operation_id="cover_jobs_result", summary="Download the cover (WAV)",
                   responses={(200, "audio/wav"): OpenApiTypes.BINARY, **_errors(401, 404, 409, 410)})
    def get(self, request, job_id):
        job = cover_job_get(job_id=job_id, caller=Caller.from_request(request))
        return _file_of(job, "result", f"cover-{job.id}.wav")


class CoverJobArtifactApi(APIView):
    @extend_schema(operation_id="cover_jobs_artifact",
                   summary="Download a stem: vocals, instrumental or converted_vocals (WAV)",
                   responses={(200, "audio/wav"): OpenApiTypes.BINARY, **_errors(401, 404, 409)})
    def get(self, request, job_id, name):
        job = cover_job_get(job_id=job_id, caller=Caller.from_request(request))
        if name not in CoverJob.ARTIFACTS:
            raise NotFound(f"unknown artifact; one of {', '.join(CoverJob.ARTIFACTS)}", field="name")
        return _file_of(job, name, f"{name}-{job.id}.wav")


# One URL can only route to one view class: these combine the per-operation classes by method.
class CoverJobsEndpoint(CoverJobListApi, CoverJobCreateApi):
    pass


class CoverJobEndpoint(CoverJobDetailApi, CoverJobDeleteApi):
    pass


class VoiceModelOutputSerializer(serializers.Serializer):
    model_id = serializers.CharField()
    name = serializers.CharField()
    engine = serializers.CharField()
    is_default = serializers.BooleanField()
    defaults = serializers.SerializerMethodField()

    def get_defaults(self, model) -> dict:
        return {"pitch_shift": model.default_pitch_shift, "auto_pitch": model.default_auto_pitch,
                "reverb": model.default_reverb}


class VoiceModelListApi(APIView):
    @extend_schema(operation_id="cover_models_list", summary="The enabled voice models (model_id values)",
                   responses={200: VoiceModelOutputSerializer(many=True), **_errors(401)})
    def get(self, request):
        from .voice_models import voice_model_list_enabled

        return Response({"results": VoiceModelOutputSerializer(voice_model_list_enabled(), many=True).data})
