"""HTTP API under /api/v1/cover/: one class per operation, its serializers beside it.

Views validate input, call a service or selector, and answer; rules live in services."""
from __future__ import annotations

import hashlib
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
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
from .errors import Conflict, Gone, InvalidParameter, NotFound, UploadTooLarge
from .models import CoverJob
from .numbers import PlainFloatField, PlainIntegerField, plain_whole_number
from .selectors import cover_job_get, cover_job_list, cover_job_wait
from .services import (IdempotentReplay, cover_job_cancel, cover_job_create, cover_job_delete, idempotency_lookup,
                       idempotency_store_response)
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
    attempt = serializers.IntegerField(help_text="Which run of the job this is: 1, or 2 after an automatic retry.")
    retries = serializers.IntegerField(help_text=(
        "Automatic retries used (at most 1: after a transient error such as GPU out of memory, or a "
        "worker shutdown that interrupted the job)."))
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
    urls = serializers.SerializerMethodField(help_text=(
        "self, cancel, result and artifacts (per stem; once succeeded), websocket (path of the live "
        "event stream)."))
    metrics = serializers.SerializerMethodField(help_text=(
        "stages (seconds per stage), processing_seconds, song_seconds, real_time_factor "
        "(processing / song duration), queue_wait_seconds (created -> started)."))
    webhook_url = serializers.CharField(allow_blank=True)
    webhook_events = serializers.ListField(child=serializers.CharField())
    engines = serializers.SerializerMethodField(help_text=(
        "Once a stage has run: what the separator and converter reported (engine, model file, version, "
        "device, whether the model came from the worker's cache, parameters used)."))

    def get_engines(self, job) -> dict:
        stages = (job.report or {}).get("stages") or {}
        return {role: stages[stage] for role, stage in (("separator", "separate"), ("converter", "infer"))
                if isinstance(stages.get(stage), dict)}

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

    def get_urls(self, job) -> dict:
        urls = self.get_links(job)
        urls["websocket"] = f"/ws/cover/jobs/{job.id}/"
        return urls

    def get_metrics(self, job) -> dict:
        stages = {k: float(v) for k, v in (job.timings or {}).items() if isinstance(v, (int, float))}
        report = job.report or {}
        processing = report.get("total_seconds")
        if processing is None and stages:
            processing = round(sum(stages.values()), 3)
        info = job.input_info or {}
        song = (report.get("input") or {}).get("duration") or (info.get("song") or info.get("vocals") or {}).get(
            "duration")
        wait = None
        if job.started_at and job.created_at:
            wait = round((job.started_at - job.created_at).total_seconds(), 3)
        return {"stages": stages, "processing_seconds": processing, "song_seconds": song,
                "real_time_factor": round(processing / song, 4) if processing and song else None,
                "queue_wait_seconds": wait}


def _job_response(job, request, status=200, headers=None) -> Response:
    return Response(CoverJobOutputSerializer(job, context={"request": request}).data, status=status,
                    headers=headers)


RVC_PARAMS = ("index_rate", "protect", "rms_mix_rate", "filter_radius", "f0_method")


class CoverJobCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        # Empty files pass here and get covers.uploads' 422 empty_audio (audio with no samples).
        song = serializers.FileField(help_text="The song (any common audio format). Exactly one of song or vocals.",
                                     allow_empty_file=True, required=False)
        vocals = serializers.FileField(required=False, allow_empty_file=True, help_text=(
            "Your own vocal stem instead of song: separation is skipped."))
        instrumental = serializers.FileField(required=False, allow_empty_file=True, help_text=(
            "With vocals: your own instrumental stem (default: silence of the vocal's length)."))
        reference_voice = serializers.FileField(help_text="A clean recording of the target voice (3-60 s).",
                                                allow_empty_file=True)
        model_id = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,100}$", required=False, allow_blank=True,
                                          max_length=100)
        # No defaults here: left out, they come from the model's defaults (covers.voice_models).
        pitch_shift = PlainFloatField(required=False, min_value=-24, max_value=24,
                                             help_text="Semitones, -24..24 (default: the model's, else 0).")
        auto_pitch = serializers.BooleanField(required=False, allow_null=True, default=None,
                                             help_text="Default: the model's, else false.")
        reference_text = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
        target_text = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
        separator = serializers.CharField(required=False, allow_blank=True, max_length=64)
        converter = serializers.CharField(required=False, allow_blank=True, max_length=64)
        vocal_gain_db = PlainFloatField(required=False, min_value=-24, max_value=24,
                                               help_text="dB on the converted vocal, -24..24 (default 0).")
        instrumental_gain_db = PlainFloatField(required=False, min_value=-24, max_value=24,
                                                      help_text="dB on the instrumental, -24..24 (default 0).")
        reverb = PlainFloatField(required=False, min_value=0, max_value=1,
                                        help_text="Reverb wet amount 0..1 (default: the model's, else 0).")
        output_format = serializers.ChoiceField(choices=["wav", "flac", "mp3"], required=False,
                                                help_text="The result's format (default wav).")
        output_sample_rate = PlainIntegerField(required=False, min_value=8000, max_value=192000,
                                                      help_text="Hz (default: the song's own rate).")
        webhook_url = serializers.CharField(required=False, allow_blank=True, max_length=2000, help_text=(
            "http(s) URL that receives signed POSTs of the job JSON (headers Webhook-Id, Webhook-Timestamp, "
            "Webhook-Signature; secret: GET /api/v1/cover/webhook-secret)."))
        webhook_events = serializers.ListField(
            child=serializers.CharField(max_length=64), required=False, help_text=(
                "Subset of start, progress, completed (default: all); repeat the field or separate by commas."))

        # Registered UVR-family models for the separate stage (GET /api/v1/cover/models, step).
        separator_model = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,100}$", required=False, allow_blank=True,
                                                 max_length=100, help_text=(
            "A registered separator model (step 'separate'): separation runs with it (engine uvr)."))
        karaoke_model = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,100}$", required=False, allow_blank=True,
                                               max_length=100, help_text=(
            "A registered karaoke model: splits lead from backing vocals; the backing vocals go back into "
            "the mix unconverted unless convert_backing."))
        dereverb_model = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,100}$", required=False, allow_blank=True,
                                                max_length=100, help_text=(
            "A registered de-reverb / de-echo model, run on the (lead) vocal before conversion."))
        convert_backing = serializers.BooleanField(required=False, allow_null=True, default=None, help_text=(
            "With karaoke_model: convert the backing vocals too (default false: mixed back as they are)."))
        # RVC voices (default: the model's engine_defaults, else RVC's own defaults)
        index_rate = PlainFloatField(required=False, min_value=0, max_value=1, help_text=(
            "RVC: how much of the voice's .index features to blend in, 0..1 (default 0.75)."))
        protect = PlainFloatField(required=False, min_value=0, max_value=0.5, help_text=(
            "RVC: protect breaths and consonants from retrieval, 0..0.5 (0.5 = off; default 0.33)."))
        rms_mix_rate = PlainFloatField(required=False, min_value=0, max_value=1, help_text=(
            "RVC: 0 = follow the original vocal's loudness envelope, 1 = keep the model's (default 0.25)."))
        filter_radius = PlainIntegerField(required=False, min_value=0, max_value=7, help_text=(
            "RVC: median filter radius on the pitch track, 0..7 (default 3)."))
        f0_method = serializers.ChoiceField(choices=["rmvpe", "crepe"], required=False, help_text=(
            "RVC: pitch tracker (default rmvpe when the worker has rmvpe.pt, else crepe)."))

        def validate_webhook_events(self, value):
            return [e.strip() for v in value for e in v.split(",") if e.strip()]

        def validate(self, attrs):
            if attrs.get("song") is None and attrs.get("vocals") is None:
                raise serializers.ValidationError({"song": "send song, or your own vocal stem as vocals"},
                                                  code="required")
            if attrs.get("song") is not None and attrs.get("vocals") is not None:
                raise serializers.ValidationError({"vocals": "send either song or vocals, not both"})
            if attrs.get("instrumental") is not None and attrs.get("vocals") is None:
                raise serializers.ValidationError({"instrumental": "instrumental goes with vocals, not with song"})
            attrs["engine_params"] = {name: attrs.pop(name) for name in RVC_PARAMS if name in attrs}
            return attrs

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

    @extend_schema(
        operation_id="cover_jobs_create", request=InputSerializer,
        responses={201: CoverJobOutputSerializer, **_errors(400, 401, 413, 415, 422, 429, 503)},
        summary="Create a cover job",
        parameters=[
            OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, description=(
                "Repeating a create with the same key (per API key, 24 h) returns the same job with the same "
                "status code and body; the same key with other parameters or files is 422 "
                "idempotency_mismatch.")),
            OpenApiParameter("Prefer", str, OpenApiParameter.HEADER, description=(
                "wait=N (N <= 60): hold the response until the job ends or N seconds pass; answered with "
                "Preference-Applied: wait=N.")),
        ])
    def post(self, request):
        caller = Caller.from_request(request)
        wait = parse_prefer_wait(request.headers.get("Prefer", ""))
        idem_key = request.headers.get("Idempotency-Key", "").strip()
        if len(idem_key) > 255:
            raise InvalidParameter("Idempotency-Key is longer than 255 characters", field="Idempotency-Key")
        use_idem = bool(idem_key) and caller.api_key is not None
        request_hash = ""
        if use_idem:
            request_hash = request_fingerprint(request)
            record = idempotency_lookup(api_key=caller.api_key, key=idem_key, request_hash=request_hash)
            if record is not None:
                return self._replay(record, request)
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
        try:
            job = cover_job_create(caller=caller, idempotency_key=idem_key if use_idem else "",
                                   request_hash=request_hash, **ser.validated_data)
        except IdempotentReplay as replay:
            return self._replay(replay.record, request)
        headers = {"Location": request.build_absolute_uri(reverse("covers:job-detail", kwargs={"job_id": job.id}))}
        if wait is not None:
            job = cover_job_wait(job_id=job.id, seconds=wait, caller=caller)
            headers["Preference-Applied"] = f"wait={wait}"
        response = _job_response(job, request, status=201, headers=headers)
        if use_idem:
            idempotency_store_response(api_key=caller.api_key, key=idem_key, status=201, body=response.data)
        return response

    @staticmethod
    def _replay(record, request) -> Response:
        if record.job is None:  # deleted since: nothing to return but the stored body
            if record.response_body is not None:
                return Response(record.response_body, status=record.response_status or 201)
            raise NotFound("the job created with this Idempotency-Key was deleted", field="Idempotency-Key")
        headers = {"Location": request.build_absolute_uri(reverse("covers:job-detail",
                                                                  kwargs={"job_id": record.job_id})),
                   "Idempotent-Replayed": "true"}
        if record.response_body is not None:
            return Response(record.response_body, status=record.response_status or 201, headers=headers)
        return _job_response(record.job, request, status=201, headers=headers)


def parse_prefer_wait(header: str) -> int | None:
    """N of ``Prefer: wait=N`` (RFC 7240), None when absent; 400 naming Prefer when N is not
    an integer 0..COVER_MAX_PREFER_WAIT_SECONDS."""
    for pref in header.split(","):
        name, _, value = pref.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.split(";")[0].strip().strip('"')
        limit = settings.COVER_MAX_PREFER_WAIT_SECONDS
        seconds = plain_whole_number(value)  # ASCII digits only (str.isdigit() takes any script's)
        if seconds is None or seconds > limit:
            raise InvalidParameter(f"Prefer: wait must be a whole number of seconds from 0 to {limit}",
                                   field="Prefer")
        return seconds
    return None


def request_fingerprint(request) -> str:
    """sha256 over the form fields (sorted, every value) and each file's name and content hash:
    what an Idempotency-Key promises stays the same."""
    h = hashlib.sha256()
    for name in sorted(request.POST.keys()):
        for value in request.POST.getlist(name):
            h.update(f"f:{name}={value}\n".encode())
    for name in sorted(request.FILES.keys()):
        for upload in request.FILES.getlist(name):
            fh = hashlib.sha256()
            for chunk in upload.chunks():
                fh.update(chunk)
            upload.seek(0)
            h.update(f"u:{name}={fh.hexdigest()}\n".encode())
    return h.hexdigest()


class CoverJobPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


# What the list answers (PageNumberPagination's envelope), so the schema matches the response.
CoverJobPageSerializer = inline_serializer("CoverJobPage", fields={
    "count": serializers.IntegerField(), "next": serializers.URLField(allow_null=True),
    "previous": serializers.URLField(allow_null=True), "results": CoverJobOutputSerializer(many=True)})


class CoverJobListApi(APIView):
    @extend_schema(operation_id="cover_jobs_list", summary="List my jobs, newest first",
                   parameters=[OpenApiParameter("status", str, description="queued|running|succeeded|failed|"
                                                "canceled (comma-separated)"),
                               OpenApiParameter("page", int), OpenApiParameter("page_size", int)],
                   responses={200: CoverJobPageSerializer, **_errors(400, 401, 404)})
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


AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".m4a": "audio/mp4", ".aiff": "audio/aiff"}


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
    ext = Path(f.name).suffix.lower() or ".wav"
    filename = f"{Path(filename).stem}{ext}"
    return FileResponse(fh, as_attachment=True, filename=filename,
                        content_type=AUDIO_TYPES.get(ext, "application/octet-stream"))


class CoverJobResultApi(APIView):
    @extend_schema(operation_id="cover_jobs_result", summary="Download the cover (the job's output_format)",
                   responses={(200, "audio/wav"): OpenApiTypes.BINARY, (200, "audio/flac"): OpenApiTypes.BINARY,
                              (200, "audio/mpeg"): OpenApiTypes.BINARY, **_errors(401, 404, 409, 410)})
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
    kind = serializers.CharField(help_text="Read from the file: rvc, uvr-vr, mdx, mdxc, roformer, demucs, gpt-sovits "
                                           "(empty for the built-in world converter).")
    step = serializers.CharField(help_text="voice (name it as model_id), separate (separator_model), karaoke "
                                           "(karaoke_model) or dereverb (dereverb_model).")
    use_as = serializers.SerializerMethodField()
    sample_rate = serializers.IntegerField(allow_null=True)
    version = serializers.CharField()
    sha256 = serializers.CharField()
    is_default = serializers.BooleanField()
    defaults = serializers.SerializerMethodField()
    needs = serializers.SerializerMethodField()
    last_test = serializers.SerializerMethodField()

    def get_use_as(self, model) -> str:
        return {"voice": "model_id", "separate": "separator_model", "karaoke": "karaoke_model",
                "dereverb": "dereverb_model"}.get(model.step, "model_id")

    def get_defaults(self, model) -> dict:
        return {"pitch_shift": model.default_pitch_shift, "auto_pitch": model.default_auto_pitch,
                "reverb": model.default_reverb, **(model.engine_defaults or {})}

    def get_needs(self, model) -> list[dict]:
        from .voice_models import model_needs

        return model_needs(model)

    def get_last_test(self, model) -> dict | None:
        if model.last_test_at is None:
            return None
        return {"ok": model.last_test_ok, "at": model.last_test_at, "seconds": model.last_test_seconds,
                "message": model.last_test_message}


class VoiceModelListApi(APIView):
    @extend_schema(operation_id="cover_models_list", summary="The enabled voice models (model_id values)",
                   responses={200: inline_serializer("VoiceModelList", fields={
                       "results": VoiceModelOutputSerializer(many=True)}), **_errors(401)})
    def get(self, request):
        from .voice_models import voice_model_list_enabled

        return Response({"results": VoiceModelOutputSerializer(voice_model_list_enabled(), many=True).data})


class WebhookSecretApi(APIView):
    @extend_schema(operation_id="cover_webhook_secret", summary="This API key's webhook signing secret",
                   description=("Deliveries carry Webhook-Signature: v1,<base64 HMAC-SHA256 over "
                                "\"{Webhook-Id}.{Webhook-Timestamp}.{body}\"> keyed with the base64-decoded part "
                                "of the secret after whsec_ (the Standard Webhooks scheme)."),
                   responses={200: inline_serializer("WebhookSecret", fields={
                       "webhook_secret": serializers.CharField()}), **_errors(401, 403)})
    def get(self, request):
        caller = Caller.from_request(request)
        if caller.api_key is None:
            raise PermissionDenied()
        return Response({"webhook_secret": caller.api_key.webhook_secret})
