"""The voice-model registry: validation (missing file, path escape, malicious pickle, safe weights),
one default model, model_id on job creation, GET models, the config a job gets, test load."""
from __future__ import annotations

import pytest
from rq import SimpleWorker

from covers import voice_models
from covers.jobs import build_pipeline_config
from covers.models import CoverJob, VoiceModel
from covers.queue import cover_queue, redis_connection
from tests.service.conftest import make_key
from tests.service.test_api import assert_error, post_job

from .conftest import save_malicious_pickle, save_safe_weights

pytestmark = pytest.mark.django_db(transaction=True)

ADD = "/admin/covers/voicemodel/add/"
MODELS = "/api/v1/cover/models"


def form(**fields) -> dict:
    data = {"model_id": "alto", "name": "Alto", "engine": "gpt-sovits-api", "enabled": "on", "step": "voice",
            "engine_defaults": "{}",
            "gpt_weights": "alto/alto-e15.ckpt", "sovits_weights": "alto/alto_e8_s200.pth",
            "reference_audio": "", "reference_text": "", "default_pitch_shift": "0", "default_reverb": "0"}
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def gpt_model(root, model_id="alto", **kw) -> VoiceModel:
    save_safe_weights(root / model_id / f"{model_id}-e15.ckpt")
    save_safe_weights(root / model_id / f"{model_id}_e8_s200.pth")
    m = VoiceModel(model_id=model_id, name=model_id.title(), engine="gpt-sovits-api",
                   gpt_weights=f"{model_id}/{model_id}-e15.ckpt", sovits_weights=f"{model_id}/{model_id}_e8_s200.pth",
                   **kw)
    return voice_models.voice_model_save(model=m)


def world_model(model_id="plain", **kw) -> VoiceModel:
    return voice_models.voice_model_save(model=VoiceModel(model_id=model_id, name=model_id, engine="world", **kw))


# --- validation --------------------------------------------------------------------------------
def test_admin_saves_a_model_with_safe_weights_and_it_becomes_the_default(admin_client, models_root):
    save_safe_weights(models_root / "alto" / "alto-e15.ckpt")
    save_safe_weights(models_root / "alto" / "alto_e8_s200.pth")
    resp = admin_client.post(ADD, form())
    assert resp.status_code == 302, resp.content.decode()[:2000]
    m = VoiceModel.objects.get(model_id="alto")
    assert m.is_default and m.enabled  # the first model is the default


def test_admin_refuses_a_missing_file(admin_client, models_root):
    save_safe_weights(models_root / "alto" / "alto-e15.ckpt")
    resp = admin_client.post(ADD, form())
    assert resp.status_code == 200
    errors = resp.context["adminform"].form.errors
    assert "sovits_weights" in errors and "does not exist" in errors["sovits_weights"][0]
    assert not VoiceModel.objects.exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_admin_refuses_a_path_outside_the_models_root(admin_client, models_root, tmp_path, how):
    outside = save_safe_weights(tmp_path / "elsewhere" / "x.ckpt")
    save_safe_weights(models_root / "alto" / "alto_e8_s200.pth")
    if how == "dotdot":
        value = "../elsewhere/x.ckpt"
    elif how == "absolute":
        value = str(outside)
    else:
        (models_root / "link.ckpt").symlink_to(outside)
        value = "link.ckpt"
    resp = admin_client.post(ADD, form(gpt_weights=value))
    assert resp.status_code == 200
    err = resp.context["adminform"].form.errors["gpt_weights"][0]
    assert "outside the allowed model folders" in err
    assert not VoiceModel.objects.exists()


@pytest.mark.parametrize("zip_format", [False, True], ids=["raw-pickle", "torch-zip"])
def test_a_weights_file_that_would_run_code_is_refused_and_not_run(admin_client, models_root, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    save_malicious_pickle(models_root / "alto" / "alto-e15.ckpt", marker, zip_format=zip_format)
    save_safe_weights(models_root / "alto" / "alto_e8_s200.pth")
    resp = admin_client.post(ADD, form())
    assert resp.status_code == 200
    err = resp.context["adminform"].form.errors["gpt_weights"][0]
    assert "refused" in err or "could not be loaded" in err
    assert not marker.exists()  # the payload never ran
    assert not VoiceModel.objects.exists()


def test_gpt_sovits_v3_header_is_accepted(models_root):
    path = save_safe_weights(models_root / "v3" / "v3.pth")
    data = bytearray(path.read_bytes())
    data[:2] = b"05"  # GPT-SoVITS v3+ marks its SoVITS files this way
    path.write_bytes(bytes(data))
    voice_models.check_weights_safe(path)  # no error


def test_gpt_sovits_engines_need_both_weights_world_needs_none(models_root):
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="gpt-sovits-command"))
    assert set(exc.value.errors) == {"gpt_weights", "sovits_weights"}
    assert world_model("plain").pk


def test_reverb_and_pitch_ranges(models_root):
    with pytest.raises(voice_models.ModelInvalid) as exc:
        world_model("loud", default_reverb=1.5, default_pitch_shift=30)
    assert set(exc.value.errors) == {"default_reverb", "default_pitch_shift"}


# --- one default -------------------------------------------------------------------------------
def test_exactly_one_default(models_root, admin_client):
    a = world_model("a")
    b = world_model("b")
    assert VoiceModel.objects.get(pk=a.pk).is_default and not VoiceModel.objects.get(pk=b.pk).is_default
    b.is_default = True
    voice_models.voice_model_save(model=b)
    assert list(VoiceModel.objects.filter(is_default=True).values_list("model_id", flat=True)) == ["b"]
    # the default cannot be unset or disabled directly
    b.is_default = False
    with pytest.raises(voice_models.ModelInvalid):
        voice_models.voice_model_save(model=b)
    b = VoiceModel.objects.get(pk=b.pk)
    b.enabled = False
    with pytest.raises(voice_models.ModelInvalid):
        voice_models.voice_model_save(model=b)
    # the admin action switches it
    resp = admin_client.post("/admin/covers/voicemodel/", {"action": "make_default", "_selected_action": [a.pk]})
    assert resp.status_code == 302
    assert list(VoiceModel.objects.filter(is_default=True).values_list("model_id", flat=True)) == ["a"]
    # deleting the default promotes another enabled model
    resp = admin_client.post(f"/admin/covers/voicemodel/{a.pk}/delete/", {"post": "yes"})
    assert resp.status_code == 302
    assert list(VoiceModel.objects.filter(is_default=True).values_list("model_id", flat=True)) == ["b"]


def test_a_disabled_model_cannot_become_the_default(models_root):
    world_model("a")
    off = world_model("off", enabled=False)
    with pytest.raises(voice_models.ModelInvalid):
        voice_models.voice_model_set_default(model=off)


# --- the API -----------------------------------------------------------------------------------
def test_models_endpoint_lists_enabled_models(client, models_root):
    gpt_model(models_root, "alto", default_pitch_shift=-3, default_reverb=0.2)
    world_model("plain", default_auto_pitch=True)
    world_model("hidden", enabled=False)
    _, raw = make_key("k")
    assert client.get(MODELS).status_code == 401
    body = client.get(MODELS, HTTP_X_API_KEY=raw).json()["results"]
    assert [m["model_id"] for m in body] == ["alto", "plain"]  # default first
    first = {k: body[0][k] for k in ("model_id", "name", "engine", "is_default", "defaults", "step", "use_as")}
    assert first == {"model_id": "alto", "name": "Alto", "engine": "gpt-sovits-api", "is_default": True,
                     "defaults": {"pitch_shift": -3.0, "auto_pitch": False, "reverb": 0.2},
                     "step": "voice", "use_as": "model_id"}
    assert {n["setting"] for n in body[0]["needs"]} == {"gpt_weights/sovits_weights", "GPT_SOVITS_API_URL"}
    assert body[1]["defaults"]["auto_pitch"] is True and body[1]["is_default"] is False


def test_unknown_or_disabled_model_id_is_400_naming_model_id(client, models_root, song_bytes, ref_bytes):
    world_model("plain")
    world_model("off", enabled=False)
    _, raw = make_key("k")
    err = assert_error(post_job(client, raw, song_bytes, ref_bytes, model_id="nope"), 400, field="model_id",
                       code="unknown_model")
    assert "nope" in err["message"] and "plain" in err["message"]
    assert_error(post_job(client, raw, song_bytes, ref_bytes, model_id="off"), 400, field="model_id",
                 code="model_disabled")
    assert CoverJob.objects.count() == 0


def test_no_model_id_means_the_default_model_and_its_defaults(client, models_root, song_bytes, ref_bytes):
    gpt_model(models_root, "alto", default_pitch_shift=-3, default_auto_pitch=True, default_reverb=0.25)
    _, raw = make_key("k")
    resp = post_job(client, raw, song_bytes, ref_bytes)
    assert resp.status_code == 201, resp.content
    p = resp.json()["parameters"]
    assert p["model_id"] == "alto" and p["converter"] == "gpt-sovits-api"
    assert p["pitch_shift"] == -3.0 and p["auto_pitch"] is True and p["reverb"] == 0.25
    # explicit values win over the model's defaults
    p2 = post_job(client, raw, song_bytes, ref_bytes, pitch_shift="2", auto_pitch="false",
                  converter="world").json()["parameters"]
    assert p2["pitch_shift"] == 2.0 and p2["auto_pitch"] is False and p2["converter"] == "world"
    # the registered files and reverb reach the pipeline config
    job = CoverJob.objects.get(parameters__pitch_shift=-3.0)
    config = build_pipeline_config(job)
    assert config.converter == "gpt-sovits-api" and config.model_id == "alto"
    entry = config.engine_options["gpt-sovits-api"]["models"]["alto"]
    assert entry["gpt_weights"] == str((models_root / "alto" / "alto-e15.ckpt").resolve())
    assert entry["sovits_weights"] == str((models_root / "alto" / "alto_e8_s200.pth").resolve())
    assert config.mix.reverb == 0.25 and config.pitch_shift == -3.0 and config.auto_pitch is True


def test_no_registered_model_keeps_the_settings(client, models_root, song_bytes, ref_bytes, settings):
    _, raw = make_key("k")
    p = post_job(client, raw, song_bytes, ref_bytes).json()["parameters"]
    assert p["model_id"] is None and p["converter"] == settings.COVER_CONVERTER and p["pitch_shift"] == 0.0


def test_unregistered_model_id_follows_the_inherited_rules(client, models_root, song_bytes, ref_bytes, settings,
                                                           tmp_path):
    project = tmp_path / "GPT-SoVITS"
    save_safe_weights(project / "trained" / "tenor" / "tenor-e10.ckpt")
    save_safe_weights(project / "trained" / "tenor" / "tenor_e5_s100.pth")
    settings.GPT_SOVITS_PROJECT_ROOT = str(project)
    _, raw = make_key("k")
    resp = post_job(client, raw, song_bytes, ref_bytes, model_id="tenor")
    assert resp.status_code == 201, resp.content
    assert resp.json()["parameters"]["model_id"] == "tenor"
    assert_error(post_job(client, raw, song_bytes, ref_bytes, model_id="bass"), 400, field="model_id")


def test_command_converter_uses_the_registered_files(models_root, tmp_path):
    """gpt-sovits-command: {gpt_weights}/{sovits_weights} come from the registry, not a project search."""
    import sys

    import numpy as np

    from inference.engines.base import ConversionParams
    from inference.engines.command import GptSovitsCommandConverter

    out = tmp_path / "args.txt"
    script = tmp_path / "conv.py"
    script.write_text("import sys, shutil\nopen(sys.argv[1], 'w').write(sys.argv[2] + '\\n' + sys.argv[3])\n"
                      "shutil.copy(sys.argv[4], sys.argv[5])\n")
    template = (f"{sys.executable} {script} {out} {{gpt_weights}} {{sovits_weights}} {{input_vocal}} "
                f"{{output_vocal}}")
    conv = GptSovitsCommandConverter(template=template, models={"alto": {"gpt_weights": "/m/a.ckpt",
                                                                          "sovits_weights": "/m/a.pth"}})
    from inference.context import StageContext
    ctx = StageContext(stage="infer", workdir=tmp_path / "w")
    sr = 16000
    vocal = np.sin(np.linspace(0, 2000, sr)).astype(np.float32) * 0.3
    conv.convert(vocal, sr, vocal, sr, ConversionParams(model_id="alto"), ctx)
    assert out.read_text().split("\n") == ["/m/a.ckpt", "/m/a.pth"]


# --- test load in a worker ---------------------------------------------------------------------
def _run_queue():
    SimpleWorker([cover_queue()], connection=redis_connection()).work(burst=True)


def test_test_load_action_records_success_and_failure(admin_client, models_root):
    good = gpt_model(models_root, "alto")
    bad = gpt_model(models_root, "bass")
    (models_root / "bass" / "bass_e8_s200.pth").unlink()  # broken after saving
    resp = admin_client.post("/admin/covers/voicemodel/", {"action": "test_load",
                                                          "_selected_action": [good.pk, bad.pk]})
    assert resp.status_code == 302
    assert VoiceModel.objects.get(pk=good.pk).last_test_message.startswith("queued")
    _run_queue()
    good.refresh_from_db()
    bad.refresh_from_db()
    assert good.last_test_ok is True and good.last_test_at is not None
    assert "weights_only=True" in good.last_test_message
    assert bad.last_test_ok is False and "does not exist" in bad.last_test_message
    page = admin_client.get(f"/admin/covers/voicemodel/{bad.pk}/change/").content.decode()
    assert "does not exist" in page
