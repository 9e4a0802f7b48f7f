"""Data: API keys (hashed, with limits) and cover jobs. Rules live in covers.services."""
from __future__ import annotations

import base64
import secrets
import uuid

from django.conf import settings
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey


def new_webhook_secret() -> str:
    """A Standard-Webhooks style secret: ``whsec_`` + base64 of 32 random bytes (the HMAC key is
    the decoded bytes; covers.webhooks.sign)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class APIKey(AbstractAPIKey):
    """An API key (stored hashed by djangorestframework-api-key) with an owner, limits and last use.

    Limits left empty mean "no limit beyond the service's settings"."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="cover_api_keys")
    max_concurrent_jobs = models.PositiveIntegerField(null=True, blank=True,
                                                      help_text="Queued + running jobs at once.")
    jobs_per_day = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs created per 24 h.")
    max_upload_mb = models.FloatField(null=True, blank=True, help_text="Per uploaded file, in MB.")
    max_song_seconds = models.FloatField(null=True, blank=True, help_text="Longest song accepted.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    webhook_secret = models.CharField(max_length=100, default=new_webhook_secret, editable=False,
                                      help_text="Signs this key's webhook deliveries (HMAC-SHA256).")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"


def _upload_to(instance: "CoverJob", filename: str) -> str:
    # Names are ours (the client's file name is never used as a path).
    return f"covers/{instance.id}/{filename}"


class CoverJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    class Stage(models.TextChoices):
        PREPROCESS = "preprocess", "Preprocess"
        SEPARATE = "separate", "Separate"
        INFER = "infer", "Infer"
        MIX = "mix", "Mix"
        FINALIZE = "finalize", "Finalize"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)
    ACTIVE = (Status.QUEUED, Status.RUNNING)
    ARTIFACTS = ("vocals", "instrumental", "converted_vocals")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs",
                              help_text="The API key that created the job.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="cover_jobs",
                             help_text="The logged-in user that created the job, or the key's owner.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    stage = models.CharField(max_length=16, choices=Stage.choices, blank=True, default="")
    progress = models.PositiveSmallIntegerField(default=0)  # 0..100 over the whole job
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    # model_id, pitch_shift, auto_pitch, reference_text, target_text, separator, converter
    parameters = models.JSONField(default=dict, blank=True)
    input_info = models.JSONField(default=dict, blank=True)  # probe results of the uploads

    # Empty when the client brought its own stems (``vocals`` + optional ``instrumental``).
    song = models.FileField(upload_to=_upload_to, max_length=255, blank=True)
    reference_voice = models.FileField(upload_to=_upload_to, max_length=255)
    result = models.FileField(upload_to=_upload_to, max_length=255, blank=True)
    vocals = models.FileField(upload_to=_upload_to, max_length=255, blank=True)
    instrumental = models.FileField(upload_to=_upload_to, max_length=255, blank=True)
    converted_vocals = models.FileField(upload_to=_upload_to, max_length=255, blank=True)
    report = models.JSONField(default=dict, blank=True)  # the pipeline's report.json
    timings = models.JSONField(default=dict, blank=True)  # stage -> seconds
    # inference.quality's report: pitch_accuracy, speaker_similarity, original_similarity, notes...
    quality = models.JSONField(default=dict, blank=True)
    quality_warning = models.BooleanField(default=False, help_text="Pitch accuracy under 85%.")

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    expired_at = models.DateTimeField(null=True, blank=True, help_text="When cleanup deleted the job's files.")

    task_id = models.CharField(max_length=64, blank=True, default="", db_index=True,
                               help_text="The RQ job id of the current attempt.")
    attempt = models.PositiveSmallIntegerField(default=1)
    retries = models.PositiveSmallIntegerField(default=0, help_text="Runs re-queued after a transient "
                                               "error (GPU out of memory, ...); at most one.")
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When the RQ job reached Redis.")
    worker_name = models.CharField(max_length=128, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life while running.")

    webhook_url = models.URLField(max_length=2000, blank=True, default="",
                                  help_text="Receives signed POSTs of the job JSON (covers.webhooks).")
    webhook_events = models.JSONField(default=list, blank=True, help_text="Subset of start, progress, completed.")

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="covers_job_owner_created"),
            models.Index(fields=["status", "heartbeat_at"], name="covers_job_status_hb"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(progress__lte=100), name="covers_job_progress_le_100"),
            # A result exists only for a succeeded job.
            models.CheckConstraint(condition=models.Q(status="succeeded") | models.Q(result=""),
                                   name="covers_job_result_only_if_succeeded"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class IdempotencyKey(models.Model):
    """An ``Idempotency-Key`` a key used on create: the job it made and the response it got (24 h)."""

    api_key = models.ForeignKey(APIKey, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64, help_text="sha256 of the form fields and file contents.")
    job = models.ForeignKey(CoverJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "key"], name="covers_idempotency_key_unique")]

    def __str__(self) -> str:
        return f"{self.key} -> {self.job_id}"


class WebhookDelivery(models.Model):
    """One attempt to deliver one webhook message (``message_id`` is the ``Webhook-Id`` header,
    the same for every attempt of a message)."""

    job = models.ForeignKey(CoverJob, on_delete=models.CASCADE, related_name="webhook_deliveries")
    message_id = models.CharField(max_length=64, db_index=True)
    event = models.CharField(max_length=16)
    attempt = models.PositiveSmallIntegerField(default=1)
    url = models.URLField(max_length=2000)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    delivered = models.BooleanField(default=False)
    next_retry_at = models.DateTimeField(null=True, blank=True, help_text="Empty: no further attempt.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} #{self.attempt} for {self.job_id} ({self.status_code or self.error[:30]})"


# --------------------------------------------------------------------------------------------
# voice-model registry and cleanup bookkeeping (staff admin, issue 5)
# --------------------------------------------------------------------------------------------
class VoiceModel(models.Model):
    """A registered ``model_id``: its engine, files and default parameters.

    Paths are relative to COVER_MODELS_ROOT or absolute inside COVER_MODELS_ALLOWED_ROOTS;
    covers.voice_models checks them (and that the weights load safely) before saving."""

    class Engine(models.TextChoices):
        WORLD = "world", "WORLD (built in)"
        GPT_SOVITS_COMMAND = "gpt-sovits-command", "GPT-SoVITS (command)"
        GPT_SOVITS_API = "gpt-sovits-api", "GPT-SoVITS (api_v2 server)"
        RVC = "rvc", "RVC voice (v1/v2 .pth)"
        UVR = "uvr", "UVR-family separator (VR / MDX-Net / MDX23C / Roformer)"
        DEMUCS = "demucs", "Demucs separator (.th / .yaml bag)"

    class Step(models.TextChoices):
        """What a separator model does in the separate stage (converters: ``voice``)."""
        VOICE = "voice", "voice (converter)"
        SEPARATE = "separate", "separate vocals from the instrumental"
        KARAOKE = "karaoke", "split lead from backing vocals"
        DEREVERB = "dereverb", "remove reverb / echo from the vocal"

    model_id = models.SlugField(max_length=100, unique=True,
                                help_text="The model_id clients send (letters, digits, - and _).")
    name = models.CharField("display name", max_length=120)
    engine = models.CharField(max_length=64, choices=Engine.choices, default=Engine.WORLD)
    gpt_weights = models.CharField(max_length=500, blank=True, default="",
                                   help_text="GPT weights (*.ckpt): relative to the models root, or absolute "
                                             "inside an allowed root.")
    sovits_weights = models.CharField(max_length=500, blank=True, default="",
                                      help_text="SoVITS weights (*.pth), same rules.")
    reference_audio = models.CharField(max_length=500, blank=True, default="",
                                       help_text="Optional default reference clip (3-10 s), same rules.")
    reference_text = models.TextField(blank=True, default="", help_text="The reference clip's transcript.")
    # RVC and UVR-family models: one main file (+ an RVC .index, + a Roformer/MDXC YAML); what the
    # file is (kind, rate, version, sha256) is read from it by covers.voice_models, never typed in.
    model_file = models.CharField(max_length=500, blank=True, default="", help_text=(
        "RVC .pth, UVR VR .pth, MDX .onnx, MDXC/Roformer .ckpt or demucs .th/.yaml: relative to the models root, "
        "or absolute inside an allowed root (or upload it below)."))
    index_file = models.CharField(max_length=500, blank=True, default="", help_text="RVC: the voice's .index (optional).")
    config_file = models.CharField(max_length=500, blank=True, default="", help_text=(
        "MDXC / Roformer: the checkpoint's YAML config."))
    step = models.CharField(max_length=16, choices=Step.choices, default=Step.VOICE, help_text=(
        "Separator models: the step they serve (a job names them as separator_model, karaoke_model or "
        "dereverb_model)."))
    kind = models.CharField(max_length=32, blank=True, default="", editable=False)
    sample_rate = models.PositiveIntegerField(null=True, blank=True, editable=False)
    version = models.CharField(max_length=64, blank=True, default="", editable=False)
    sha256 = models.CharField(max_length=64, blank=True, default="", editable=False)
    facts = models.JSONField(default=dict, blank=True, editable=False)
    engine_defaults = models.JSONField(default=dict, blank=True, help_text=(
        'RVC defaults for jobs that leave them out, e.g. {"index_rate": 0.75, "protect": 0.33, '
        '"rms_mix_rate": 0.25, "filter_radius": 3}.'))
    default_pitch_shift = models.FloatField(default=0.0, help_text="Semitones, -24..24.")
    default_auto_pitch = models.BooleanField(default=False)
    default_reverb = models.FloatField(default=0.0, help_text="Wet amount 0..1.")
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="Used when a job names no model_id (one model).")

    last_test_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_test_ok = models.BooleanField(null=True, editable=False)
    last_test_message = models.TextField(blank=True, default="", editable=False)
    last_test_seconds = models.FloatField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("model_id",)
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=models.Q(is_default=True),
                                    name="covers_voicemodel_one_default"),
            models.CheckConstraint(condition=models.Q(is_default=False) | models.Q(enabled=True),
                                   name="covers_voicemodel_default_enabled"),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} ({self.engine})"


class CleanupRun(models.Model):
    """One pass of covers.cleanup (periodic, or `manage.py purge_expired_jobs`)."""

    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    trigger = models.CharField(max_length=16, default="periodic")  # periodic | command | admin
    dry_run = models.BooleanField(default=False)
    jobs_expired = models.PositiveIntegerField(default=0)
    files_deleted = models.PositiveIntegerField(default=0)
    orphans_deleted = models.PositiveIntegerField(default=0)
    stem_cache_expired = models.PositiveIntegerField(default=0, help_text="Stem cache entries deleted.")
    bytes_freed = models.BigIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ("-started_at",)

    def __str__(self) -> str:
        return f"cleanup {self.started_at:%Y-%m-%d %H:%M:%S}"
