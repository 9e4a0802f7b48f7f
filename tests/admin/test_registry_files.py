"""The registry for the models people already own: RVC voices (+ .index) and UVR-family separators.

Every model here is a tiny random-weight file in the real format (tests/inference/tiny_*), read by
the real code: what it is (kind, rate, version, sha256) comes from the file, never from the form.
"""
from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from covers import voice_models
from covers.jobs import build_pipeline_config
from covers.models import CoverJob, VoiceModel
from tests.inference import tiny_uvr
from tests.inference.tiny_rvc_content import make_tiny_hubert_fairseq
from tests.inference.tiny_rvc_index import make_tiny_index
from tests.service.conftest import make_key
from tests.service.test_api import assert_error, post_job

from .conftest import save_malicious_pickle, save_safe_weights

pytestmark = pytest.mark.django_db(transaction=True)

ADD = "/admin/covers/voicemodel/add/"
MODELS = "/api/v1/cover/models"


def make_rvc(path, **kw):
    from tests.inference.tiny_rvc_synth import make_tiny_rvc

    path.parent.mkdir(parents=True, exist_ok=True)
    return make_tiny_rvc(path, **kw)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def form(**fields) -> dict:
    data = {"model_id": "singer", "name": "Singer", "engine": "rvc", "enabled": "on", "step": "voice",
            "engine_defaults": "{}", "default_pitch_shift": "0", "default_reverb": "0"}
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def rvc_model(root, model_id="singer", *, version="v2", sr=40000, index=True, seed=0, **kw) -> VoiceModel:
    pth = make_rvc(root / model_id / f"{model_id}.pth", version=version, sr=sr, seed=seed)
    idx = ""
    if index:
        idx = str(make_tiny_index(root / model_id / f"added_{model_id}.index", 768 if version == "v2" else 256,
                                  seed=seed).relative_to(root))
    m = VoiceModel(model_id=model_id, name=model_id, engine="rvc", model_file=str(pth.relative_to(root)),
                   index_file=idx, **kw)
    return voice_models.voice_model_save(model=m)


@pytest.fixture
def rvc_worker_files(models_root, settings):
    """The worker-wide RVC resources: a tiny fairseq-format content encoder (no RMVPE: bundled tracker)."""
    enc = make_tiny_hubert_fairseq(models_root / "hubert_base.pt")
    settings.COVER_RVC_CONTENT_ENCODER = str(enc)
    settings.COVER_RVC_RMVPE = str(models_root / "rmvpe.pt")   # absent
    settings.COVER_UVR_MODEL_DIR = models_root / "uvr"
    return models_root


# --- what the file is, read from the file ------------------------------------------------------
@pytest.mark.parametrize("version,sr", [("v1", 32000), ("v2", 40000), ("v2", 48000)])
def test_an_rvc_voice_is_recognised_from_its_file(models_root, version, sr):
    m = rvc_model(models_root, version=version, sr=sr)
    m.refresh_from_db()
    assert (m.kind, m.engine, m.step, m.version, m.sample_rate) == ("rvc", "rvc", "voice", version, sr)
    assert m.sha256 == sha256(models_root / "singer" / "singer.pth")
    assert m.facts["index"]["dim"] == (768 if version == "v2" else 256)
    assert m.is_default   # the first voice becomes the default


def test_the_engine_typed_in_the_form_does_not_decide_the_kind(admin_client, models_root):
    make_rvc(models_root / "v" / "v.pth")
    resp = admin_client.post(ADD, form(engine="world", model_file="v/v.pth"))
    assert resp.status_code == 302, resp.context["adminform"].form.errors if resp.context else resp.content[:500]
    m = VoiceModel.objects.get(model_id="singer")
    assert (m.engine, m.kind) == ("rvc", "rvc")


def test_staff_register_a_model_by_uploading_its_files(admin_client, models_root, tmp_path):
    pth = make_rvc(tmp_path / "up" / "my voice.pth")
    idx = make_tiny_index(tmp_path / "up" / "my.index", 768)
    resp = admin_client.post(ADD, {**form(), "upload_model_file": SimpleUploadedFile("my voice.pth", pth.read_bytes()),
                                   "upload_index_file": SimpleUploadedFile("my.index", idx.read_bytes())})
    assert resp.status_code == 302, resp.context["adminform"].form.errors if resp.context else resp.content[:500]
    m = VoiceModel.objects.get(model_id="singer")
    assert m.model_file == "uploads/singer/my_voice.pth" and m.index_file == "uploads/singer/my.index"
    assert (models_root / m.model_file).read_bytes() == pth.read_bytes()
    assert m.kind == "rvc" and m.sha256 == sha256(pth) and m.facts["index"]["vectors"] == 200


def test_uvr_family_files_are_recognised(models_root):
    uvr = models_root / "uvr"
    mdx = tiny_uvr.build_mdx(uvr)
    vr = tiny_uvr.build_vr(uvr)
    ro = tiny_uvr.build_roformer(uvr)          # with <stem>.yaml beside it
    made = {}
    for mid, path, step in (("mdx", mdx, "separate"), ("vr", vr, "karaoke"), ("ro", ro, "dereverb")):
        made[mid] = voice_models.voice_model_save(model=VoiceModel(
            model_id=mid, name=mid, engine="uvr", step=step, model_file=str(path.relative_to(models_root))))
    assert [made[k].kind for k in ("mdx", "vr", "ro")] == ["mdx", "uvr-vr", "roformer"]
    assert made["mdx"].sample_rate == 44100 and made["ro"].sample_rate == 44100
    assert made["ro"].config_file.endswith("tiny_bs_roformer.yaml")   # found beside the checkpoint
    assert all(m.engine == "uvr" and not m.is_default for m in made.values())   # separators are never the default


# --- refusals, each naming what is wrong -------------------------------------------------------
def test_refuses_a_missing_model_file(models_root):
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="rvc", model_file="x/none.pth"))
    assert "does not exist" in exc.value.errors["model_file"]


def test_refuses_a_model_file_that_would_run_code(models_root, tmp_path):
    marker = tmp_path / "pwned"
    save_malicious_pickle(models_root / "evil.pth", marker, zip_format=True)
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="rvc", model_file="evil.pth"))
    assert "refused" in exc.value.errors["model_file"] and not marker.exists()


def test_refuses_a_helper_file_registered_as_a_voice(models_root):
    make_tiny_hubert_fairseq(models_root / "hubert_base.pt")
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="rvc",
                                                       model_file="hubert_base.pt"))
    assert "content-encoder" in exc.value.errors["model_file"]
    assert "COVER_RVC_CONTENT_ENCODER" in exc.value.errors["model_file"]


def test_refuses_weights_of_no_known_kind(models_root):
    import torch

    torch.save({"some.layer.weight": torch.zeros(3)}, models_root / "odd.pth")
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="rvc", model_file="odd.pth"))
    assert "no known kind" in exc.value.errors["model_file"]


def test_refuses_an_rvc_file_missing_its_weights(models_root):
    import torch

    torch.save({"config": [1] * 18, "sr": "40k", "f0": 1, "version": "v2"}, models_root / "half.pth")
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="rvc", model_file="half.pth"))
    assert "model_file" in exc.value.errors


def test_refuses_an_index_of_the_other_version(models_root):
    pth = make_rvc(models_root / "v1" / "v1.pth", version="v1", sr=40000)
    idx = make_tiny_index(models_root / "v1" / "v2.index", 768)
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="rvc",
                                                       model_file=str(pth.relative_to(models_root)),
                                                       index_file=str(idx.relative_to(models_root))))
    assert "768-dim" in exc.value.errors["index_file"] and "v1" in exc.value.errors["index_file"]


def test_refuses_an_index_that_is_not_an_index(models_root):
    pth = make_rvc(models_root / "v" / "v.pth")
    (models_root / "v" / "fake.index").write_bytes(b"not faiss at all")
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="rvc",
                                                       model_file=str(pth.relative_to(models_root)),
                                                       index_file="v/fake.index"))
    assert "FAISS" in exc.value.errors["index_file"]


def test_refuses_a_roformer_checkpoint_without_its_yaml(models_root):
    ro = tiny_uvr.build_roformer(models_root / "uvr", write_config=False)
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="uvr",
                                                       model_file=str(ro.relative_to(models_root))))
    assert "YAML" in exc.value.errors["config_file"] and "tiny_bs_roformer.yaml" in exc.value.errors["config_file"]


def test_refuses_an_onnx_that_is_not_mdx(models_root):
    import torch

    net = torch.nn.Linear(3, 2)
    torch.onnx.export(net, (torch.zeros(1, 3),), str(models_root / "lin.onnx"), dynamo=False)
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="uvr", model_file="lin.onnx"))
    assert "[batch, 4, dim_f, dim_t]" in exc.value.errors["model_file"]


def test_refuses_bad_engine_defaults(models_root):
    with pytest.raises(voice_models.ModelInvalid) as exc:
        rvc_model(models_root, engine_defaults={"index_rate": 2})
    assert "index_rate" in exc.value.errors["engine_defaults"]
    with pytest.raises(voice_models.ModelInvalid) as exc:
        rvc_model(models_root, model_id="b", engine_defaults={"speed": 1})
    assert "unknown parameter 'speed'" in exc.value.errors["engine_defaults"]


def test_a_separator_cannot_be_the_default(models_root):
    mdx = tiny_uvr.build_mdx(models_root / "uvr")
    with pytest.raises(voice_models.ModelInvalid) as exc:
        voice_models.voice_model_save(model=VoiceModel(model_id="x", name="x", engine="uvr", is_default=True,
                                                       model_file=str(mdx.relative_to(models_root))))
    assert "only a voice model" in exc.value.errors["is_default"]


# --- the API: listing, choosing, the config a job gets -----------------------------------------
def test_models_endpoint_lists_kind_step_and_needs(client, rvc_worker_files):
    root = rvc_worker_files
    rvc_model(root, engine_defaults={"index_rate": 0.5})
    voice_models.voice_model_save(model=VoiceModel(model_id="kara", name="kara", engine="uvr", step="karaoke",
                                                   model_file=str(tiny_uvr.build_vr(root / "uvr").relative_to(root))))
    _, raw = make_key("k")
    body = {m["model_id"]: m for m in client.get(MODELS, HTTP_X_API_KEY=raw).json()["results"]}
    singer, kara = body["singer"], body["kara"]
    assert (singer["kind"], singer["engine"], singer["use_as"], singer["sample_rate"], singer["version"]) == \
        ("rvc", "rvc", "model_id", 40000, "v2")
    assert singer["defaults"]["index_rate"] == 0.5 and len(singer["sha256"]) == 64
    needs = {n["setting"]: n for n in singer["needs"]}
    assert needs["COVER_RVC_CONTENT_ENCODER"]["present"] is True
    assert needs["COVER_RVC_RMVPE"] == {**needs["COVER_RVC_RMVPE"], "required": False, "present": False}
    assert (kara["kind"], kara["step"], kara["use_as"]) == ("uvr-vr", "karaoke", "karaoke_model")
    assert {n["setting"]: n["present"] for n in kara["needs"]} == {"COVER_UVR_MODEL_DIR": True}


def test_a_job_with_an_rvc_voice_gets_its_files_and_parameters(client, rvc_worker_files, song_bytes, ref_bytes):
    root = rvc_worker_files
    rvc_model(root, engine_defaults={"index_rate": 0.5, "protect": 0.2})
    sep = tiny_uvr.build_mdx(root / "uvr")
    voice_models.voice_model_save(model=VoiceModel(model_id="mdx", name="mdx", engine="uvr", step="separate",
                                                   model_file=str(sep.relative_to(root))))
    _, raw = make_key("k")
    resp = post_job(client, raw, song_bytes, ref_bytes, model_id="singer", index_rate="0.9", filter_radius="2",
                    separator_model="mdx")
    assert resp.status_code == 201, resp.content
    p = resp.json()["parameters"]
    assert p["converter"] == "rvc" and p["separator"] == "uvr" and p["separator_model"] == "mdx"
    assert p["engine_params"] == {"index_rate": 0.9, "protect": 0.2, "filter_radius": 2}
    config = build_pipeline_config(CoverJob.objects.get())
    assert config.converter == "rvc" and config.separator == "uvr"
    assert config.model_files == {"model": str((root / "singer" / "singer.pth").resolve()),
                                  "index": str((root / "singer" / "added_singer.index").resolve())}
    assert config.converter_params == {"index_rate": 0.9, "protect": 0.2, "filter_radius": 2}
    assert config.engine_options["rvc"]["content_encoder"] == str(root / "hubert_base.pt")
    assert config.engine_options["rvc"]["rmvpe"] is None          # no rmvpe.pt: the bundled tracker
    assert config.engine_options["uvr"]["model"] == str(sep.resolve())


@pytest.mark.parametrize("fields,field,code", [
    ({"model_id": "kara"}, "model_id", "wrong_model_kind"),
    ({"karaoke_model": "singer"}, "karaoke_model", "unknown_model"),
    ({"separator_model": "kara"}, "separator_model", "wrong_model_kind"),
    ({"dereverb_model": "nope"}, "dereverb_model", "unknown_model"),
    ({"index_rate": "1.5"}, "index_rate", None),
    ({"protect": "0.6"}, "protect", None),
    ({"filter_radius": "9"}, "filter_radius", None),
    ({"f0_method": "harvest"}, "f0_method", None),
])
def test_wrong_model_choices_are_400_naming_the_field(client, rvc_worker_files, song_bytes, ref_bytes, fields,
                                                       field, code):
    root = rvc_worker_files
    rvc_model(root)
    voice_models.voice_model_save(model=VoiceModel(model_id="kara", name="kara", engine="uvr", step="karaoke",
                                                   model_file=str(tiny_uvr.build_vr(root / "uvr").relative_to(root))))
    _, raw = make_key("k")
    err = assert_error(post_job(client, raw, song_bytes, ref_bytes, **fields), 400, field=field)
    if code:
        assert err["code"] == code
    assert CoverJob.objects.count() == 0


def test_a_model_whose_file_vanished_fails_the_job_naming_the_file(client, rvc_worker_files, song_bytes, ref_bytes):
    from inference.errors import PipelineError

    root = rvc_worker_files
    rvc_model(root, index=False)
    _, raw = make_key("k")
    assert post_job(client, raw, song_bytes, ref_bytes, model_id="singer").status_code == 201
    (root / "singer" / "singer.pth").unlink()
    with pytest.raises(PipelineError) as exc:
        build_pipeline_config(CoverJob.objects.get())
    assert "singer.pth" in str(exc.value) and exc.value.stage == "infer"


def test_safe_weights_of_gpt_sovits_still_register_as_before(models_root):
    save_safe_weights(models_root / "a" / "a-e1.ckpt")
    save_safe_weights(models_root / "a" / "a_e1_s1.pth")
    m = voice_models.voice_model_save(model=VoiceModel(model_id="a", name="a", engine="gpt-sovits-api",
                                                       gpt_weights="a/a-e1.ckpt", sovits_weights="a/a_e1_s1.pth"))
    assert m.engine == "gpt-sovits-api" and m.kind == ""


def test_a_demucs_checkpoint_registers_for_the_demucs_engine(client, models_root, song_bytes, ref_bytes):
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state, save_with_checksum

    kwargs = dict(sources=["drums", "bass", "other", "vocals"], channels=8, depth=2, nfft=512, dconv_comp=4,
                  t_layers=1, t_heads=1, t_hidden_scale=1)
    torch.manual_seed(0)
    repo = models_root / "demucs"
    repo.mkdir()
    save_with_checksum({"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": get_state(HTDemucs(**kwargs), None),
                        "training_args": {}}, repo / "tiny.th")
    th = next(repo.glob("tiny-*.th"))
    m = voice_models.voice_model_save(model=VoiceModel(model_id="dm", name="dm", engine="uvr", step="separate",
                                                       model_file=str(th.relative_to(models_root))))
    assert (m.kind, m.engine, m.sample_rate) == ("demucs", "demucs", 44100)
    _, raw = make_key("k")
    assert post_job(client, raw, song_bytes, ref_bytes, separator_model="dm").status_code == 201
    config = build_pipeline_config(CoverJob.objects.get())
    assert config.separator == "demucs"
    assert config.engine_options["demucs"] == {"repo": str(repo.resolve()), "name": "tiny"}


def test_test_load_of_a_separator_runs_a_real_one_second_separation(models_root, settings):
    uvr = models_root / "uvr"
    settings.COVER_UVR_MODEL_DIR = uvr
    mdx = tiny_uvr.build_mdx(uvr)
    m = voice_models.voice_model_save(model=VoiceModel(model_id="mdx", name="mdx", engine="uvr", step="separate",
                                                       model_file=str(mdx.relative_to(models_root))))
    assert voice_models.run_voice_model_test(m.pk) == "ok"
    m.refresh_from_db()
    assert m.last_test_ok is True and m.last_test_seconds > 0
    assert "separated 1 s of a test tone with tiny_mdx.onnx" in m.last_test_message
    # the model data went missing: the test fails naming the file
    (uvr / "mdx_model_data.json").unlink()
    from inference import registry
    registry.clear_cache()
    assert voice_models.run_voice_model_test(m.pk) == "failed"
    m.refresh_from_db()
    assert m.last_test_ok is False and "mdx_model_data.json" in m.last_test_message
