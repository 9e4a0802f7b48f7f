"""Staff admin: API keys, the voice-model registry, cover jobs (with audio players and actions)
and cleanup runs. Thin: every rule lives in covers.services / covers.voice_models / covers.cleanup."""
from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath

from django import forms
from django.contrib import admin, messages
from django.http import FileResponse, Http404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from rest_framework_api_key.admin import APIKeyModelAdmin

from . import services, voice_models
from .errors import CoverError
from .models import APIKey, CleanupRun, CoverJob, VoiceModel, WebhookDelivery

# The library registers an admin for its own (unused) APIKey model; ours is covers.APIKey.
try:
    from rest_framework_api_key.models import APIKey as LibraryAPIKey

    admin.site.unregister(LibraryAPIKey)
except (ImportError, admin.sites.NotRegistered):
    pass


def _error_text(exc: Exception) -> str:
    return exc.message if isinstance(exc, CoverError) else f"{exc.__class__.__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------
@admin.register(APIKey)
class CoverAPIKeyAdmin(APIKeyModelAdmin):
    """Creating a key shows the full key once (a message from the library's save_model); after
    that only its prefix is visible. Only a hash is stored."""

    list_display = ("prefix", "name", "owner", "created", "expiry_date", "_has_expired", "revoked",
                    "last_used_at", "max_concurrent_jobs", "jobs_per_day", "max_upload_mb", "max_song_seconds")
    list_filter = ("revoked", "created", "expiry_date")
    search_fields = ("name", "prefix", "owner__username")
    list_select_related = ("owner",)
    autocomplete_fields = ()
    actions = ["revoke_keys", "rotate_webhook_secret"]
    fieldsets = (
        (None, {"fields": ("name", "prefix", "owner", "expiry_date", "revoked", "last_used_at")}),
        ("Limits (new keys start with COVER_KEY_DEFAULT_*; empty: only the service's settings)", {
            "fields": ("max_concurrent_jobs", "jobs_per_day", "max_upload_mb", "max_song_seconds")}),
        ("Webhooks (signing secret; rotate with the action)", {"fields": ("webhook_secret",)}),
    )

    def get_readonly_fields(self, request, obj=None):
        return tuple(super().get_readonly_fields(request, obj)) + ("last_used_at", "webhook_secret")

    def get_changeform_initial_data(self, request):
        """A new key's form starts with the COVER_KEY_DEFAULT_* limits (covers.limits)."""
        from .limits import default_key_limits

        return {**{k: v for k, v in default_key_limits().items() if v is not None},
                **super().get_changeform_initial_data(request)}

    @admin.action(description="Rotate the webhook secret of the selected keys", permissions=["change"])
    def rotate_webhook_secret(self, request, queryset):
        from .webhooks import webhook_secret_rotate

        for key in queryset:
            webhook_secret_rotate(api_key=key)
        self.message_user(request, f"New webhook secret for {queryset.count()} key(s); clients read it from "
                                   f"GET /api/v1/cover/webhook-secret.", messages.SUCCESS)

    @admin.action(description="Revoke the selected keys (cannot be undone)", permissions=["change"])
    def revoke_keys(self, request, queryset):
        from .principals import api_keys_revoke

        n = api_keys_revoke(keys=queryset)  # their open WebSockets close too
        self.message_user(request, f"Revoked {n} key(s).", messages.SUCCESS)


# --------------------------------------------------------------------------------------------
# voice models
# --------------------------------------------------------------------------------------------
class VoiceModelForm(forms.ModelForm):
    upload_model_file = forms.FileField(required=False, label="or upload the model file", help_text=(
        "Stored under COVER_MODELS_ROOT/uploads/<model_id>/ (files over the request limit: copy them there and "
        "name the path instead)."))
    upload_index_file = forms.FileField(required=False, label="or upload the .index")
    upload_config_file = forms.FileField(required=False, label="or upload the YAML config")

    class Meta:
        model = VoiceModel
        fields = "__all__"

    def _post_clean(self):
        super()._post_clean()  # the instance now holds the submitted values
        try:
            for field in ("model_file", "index_file", "config_file"):
                upload = self.cleaned_data.get(f"upload_{field}")
                if upload:
                    setattr(self.instance, field, voice_models.voice_model_store_upload(
                        model_id=self.instance.model_id, upload=upload, what=field))
        except voice_models.ModelInvalid as exc:
            for field, message in exc.errors.items():
                self.add_error(field if field in self.fields else None, message)
            return
        try:
            voice_models.voice_model_validate(model=self.instance)
            voice_models.voice_model_check_default_change(model=self.instance)
        except voice_models.ModelInvalid as exc:
            for field, message in exc.errors.items():
                self.add_error(field if field in self.fields else None, message)


@admin.register(VoiceModel)
class VoiceModelAdmin(admin.ModelAdmin):
    form = VoiceModelForm
    list_display = ("model_id", "name", "engine", "kind", "step", "sample_rate", "version", "enabled", "is_default",
                    "last_test_ok", "last_test_seconds", "last_test_at")
    list_filter = ("engine", "kind", "step", "enabled", "is_default")
    search_fields = ("model_id", "name", "sha256")
    readonly_fields = ("kind", "sample_rate", "version", "sha256", "facts", "last_test_at", "last_test_ok",
                       "last_test_seconds", "last_test_message", "created_at", "updated_at")
    actions = ["test_load", "make_default"]
    fieldsets = (
        (None, {"fields": ("model_id", "name", "engine", "step", "enabled", "is_default")}),
        ("RVC voice or UVR-family separator: one model file (+ .index / YAML); what it is is read from the file", {
            "fields": ("model_file", "upload_model_file", "index_file", "upload_index_file", "config_file",
                       "upload_config_file", "engine_defaults")}),
        ("Read from the file", {"fields": ("kind", "sample_rate", "version", "sha256", "facts")}),
        ("GPT-SoVITS files (relative to COVER_MODELS_ROOT, or absolute inside an allowed root)", {
            "fields": ("gpt_weights", "sovits_weights", "reference_audio", "reference_text")}),
        ("Default parameters", {"fields": ("default_pitch_shift", "default_auto_pitch", "default_reverb")}),
        ("Last test load (a real 1-second inference in a worker)", {
            "fields": ("last_test_at", "last_test_ok", "last_test_seconds", "last_test_message")}),
        (None, {"fields": ("created_at", "updated_at")}),
    )

    def save_model(self, request, obj, form, change):
        # The form already validated the files, read their facts and loaded the weights safely.
        voice_models.voice_model_save(model=obj, load_weights=False)

    def delete_model(self, request, obj):
        voice_models.voice_model_delete(model=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            voice_models.voice_model_delete(model=obj)

    @admin.action(description="Test load in a worker", permissions=["change"])
    def test_load(self, request, queryset):
        try:
            for model in queryset:
                voice_models.voice_model_test_enqueue(model=model)
        except Exception as exc:
            self.message_user(request, f"Could not queue the test: {_error_text(exc)}", messages.ERROR)
            return
        self.message_user(request, f"Queued a test load for {queryset.count()} model(s); the result appears "
                                   f"under 'Last test load' once a worker has run it.", messages.SUCCESS)

    @admin.action(description="Make the selected model the default", permissions=["change"])
    def make_default(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model.", messages.ERROR)
            return
        try:
            model = voice_models.voice_model_set_default(model=queryset.get())
        except CoverError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, f"{model.model_id} is now the default model.", messages.SUCCESS)


# --------------------------------------------------------------------------------------------
# cover jobs
# --------------------------------------------------------------------------------------------
def _seconds(a, b) -> str:
    if not a or not b:
        return "-"
    return f"{(b - a).total_seconds():.1f} s"


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    fields = ("created_at", "event", "attempt", "status_code", "delivered", "error", "duration_ms", "next_retry_at",
              "message_id")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("-created_at",)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "job", "event", "attempt", "status_code", "delivered", "duration_ms",
                    "next_retry_at", "error")
    list_filter = ("event", "delivered", ("created_at", admin.DateFieldListFilter))
    search_fields = ("message_id", "job__id", "url")
    list_select_related = ("job",)
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(CoverJob)
class CoverJobAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "stage", "progress", "owner", "user", "run_time", "queue_wait",
                    "created_at", "expired")
    list_filter = ("status", "stage", "owner", ("created_at", admin.DateFieldListFilter),
                   ("expired_at", admin.EmptyFieldListFilter))
    search_fields = ("id", "task_id")
    date_hierarchy = "created_at"
    list_select_related = ("owner", "user")
    ordering = ("-created_at",)
    actions = ["cancel_jobs", "retry_jobs", "purge_files"]
    inlines = [WebhookDeliveryInline]
    fieldsets = (
        (None, {"fields": ("id", "status", "stage", "progress", "owner", "user", "error")}),
        ("Audio", {"fields": ("inputs_audio", "stems_audio", "result_audio")}),
        ("Timing", {"fields": ("created_at", "enqueued_at", "started_at", "finished_at", "queue_wait",
                               "run_time", "stage_timings", "expires_at", "expired_at")}),
        ("Details", {"classes": ("collapse",), "fields": (
            "parameters", "input_info", "report", "task_id", "attempt", "worker_name", "heartbeat_at",
            "webhook_url", "webhook_events")}),
    )

    def get_readonly_fields(self, request, obj=None):
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    def has_add_permission(self, request):
        return False  # jobs are created through the API (or retried here)

    def save_model(self, request, obj, form, change):
        pass  # every field is read-only: never write a stale copy over the worker's updates

    def render_change_form(self, request, context, *args, **kwargs):
        context.update(show_save=False, show_save_and_continue=False, show_save_and_add_another=False)
        return super().render_change_form(request, context, *args, **kwargs)

    def delete_model(self, request, obj):
        services.cover_job_delete(job=obj)  # cancels if needed and removes the files too

    def delete_queryset(self, request, queryset):
        for job in queryset:
            services.cover_job_delete(job=job)

    def get_search_results(self, request, queryset, search_term):
        """A full job id, or a prefix of one / of the RQ task id."""
        import uuid

        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        found = queryset.filter(task_id__icontains=term)
        if _prefix_ok(term):
            found = found | queryset.filter(id__istartswith=term.lower())
        return found, False

    # -- columns / fields ------------------------------------------------------------------
    @admin.display(description="run time")
    def run_time(self, obj):
        return _seconds(obj.started_at, obj.finished_at)

    @admin.display(description="queue wait")
    def queue_wait(self, obj):
        return _seconds(obj.created_at, obj.started_at)

    @admin.display(boolean=True, description="expired")
    def expired(self, obj):
        return obj.expired_at is not None

    @admin.display(description="error")
    def error(self, obj):
        if not obj.error_message and not obj.error_code:
            return "-"
        return format_html("<code>{}</code> {}", obj.error_code or "error", obj.error_message)

    @admin.display(description="per-stage timings")
    def stage_timings(self, obj):
        timings = obj.timings or {}
        if not timings:
            return "-"
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td></tr>",
                                ((k, f"{float(v):.2f} s") for k, v in timings.items()))
        return format_html("<table><tr><th>stage</th><th>seconds</th></tr>{}</table>", rows)

    def _players(self, obj, fields):
        if obj.expired_at is not None:
            return format_html("files deleted {} (expired or purged)", obj.expired_at.strftime("%Y-%m-%d %H:%M"))
        items = [(f, reverse("admin:covers_coverjob_file", args=[obj.pk, f])) for f in fields if getattr(obj, f)]
        if not items:
            return "-"
        return format_html_join(
            "", '<div style="margin-bottom:6px"><strong>{}</strong><br>'
                '<audio controls preload="none" src="{}"></audio> <a href="{}">download</a></div>',
            ((f.replace("_", " "), url, url) for f, url in items))

    @admin.display(description="inputs")
    def inputs_audio(self, obj):
        return self._players(obj, ("song", "reference_voice"))

    @admin.display(description="stems")
    def stems_audio(self, obj):
        return self._players(obj, ("vocals", "instrumental", "converted_vocals"))

    @admin.display(description="result")
    def result_audio(self, obj):
        return self._players(obj, ("result",))

    # -- admin-only file view (streams from storage) ---------------------------------------
    def get_urls(self):
        urls = [path("<uuid:object_id>/file/<str:field>/", self.admin_site.admin_view(self.file_view),
                     name="covers_coverjob_file")]
        return urls + super().get_urls()

    def file_view(self, request, object_id, field):
        if not self.has_view_permission(request):
            raise Http404
        if field not in services.FILE_FIELDS:
            raise Http404("unknown file")
        job = CoverJob.objects.filter(pk=object_id).first()
        f = getattr(job, field, None) if job is not None else None
        if not f:
            raise Http404("no such file")
        try:
            fh = f.open("rb")
        except FileNotFoundError:
            raise Http404("the file is gone") from None
        name = PurePosixPath(f.name).name
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return FileResponse(fh, filename=name, content_type=content_type)

    # -- actions ---------------------------------------------------------------------------
    def _each(self, request, queryset, op, done: str):
        ok, failed = 0, []
        for job in queryset:
            try:
                op(job)
                ok += 1
            except Exception as exc:
                failed.append(f"{job.pk}: {_error_text(exc)}")
        if ok:
            self.message_user(request, f"{done} {ok} job(s).", messages.SUCCESS)
        for line in failed[:20]:
            self.message_user(request, line, messages.ERROR)

    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset):
        self._each(request, queryset, lambda job: services.cover_job_cancel(job=job), "Canceled")

    @admin.action(description="Retry: run the selected jobs again as new jobs", permissions=["change"])
    def retry_jobs(self, request, queryset):
        created = []

        def retry(job):
            created.append(services.cover_job_retry(job=job))

        self._each(request, queryset, retry, "Re-enqueued")
        for new in created:
            self.message_user(request, format_html('New job <a href="{}">{}</a>',
                                                   reverse("admin:covers_coverjob_change", args=[new.pk]), new.pk),
                              messages.INFO)

    @admin.action(description="Purge files (inputs, stems, result)", permissions=["change"])
    def purge_files(self, request, queryset):
        self._each(request, queryset, lambda job: services.cover_job_purge_files(job=job), "Purged the files of")


def _prefix_ok(term: str) -> bool:
    return all(c in "0123456789abcdef-" for c in term.lower())


# --------------------------------------------------------------------------------------------
# cleanup runs
# --------------------------------------------------------------------------------------------
@admin.register(CleanupRun)
class CleanupRunAdmin(admin.ModelAdmin):
    list_display = ("started_at", "trigger", "jobs_expired", "files_deleted", "orphans_deleted",
                    "stem_cache_expired", "freed",
                    "error_count", "duration")
    list_filter = ("trigger",)
    date_hierarchy = "started_at"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in CleanupRun._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="freed")
    def freed(self, obj):
        return f"{obj.bytes_freed / 1e6:.1f} MB"

    @admin.display(description="errors")
    def error_count(self, obj):
        return len(obj.errors or [])

    @admin.display(description="took")
    def duration(self, obj):
        return _seconds(obj.started_at, obj.finished_at)


admin.site.site_header = "Song cover service"
admin.site.site_title = "Song covers admin"
