"""The ``uvr`` separator on tiny random-weight models in the real formats (tests/inference/tiny_uvr.py),
loaded by python-audio-separator's own classes; the separation chain (karaoke, de-reverb)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference import registry
from inference.config import PipelineConfig
from inference.context import StageContext
from inference.errors import Canceled, PipelineError
from inference.stages import separate
from inference.stages.preprocess import Preprocessed
from tests import netguard
from tests.inference import tiny_uvr

SR = 44100
SECONDS = 2.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two shared cores: one torch thread is faster than two fighting other processes."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("uvr-models")
    tiny_uvr.build_mdx(d, "tiny_mdx.onnx")
    tiny_uvr.build_vr(d, "tiny_vr.pth")
    tiny_uvr.build_roformer(d, "tiny_bs_roformer.ckpt", kind="bs")
    tiny_uvr.build_roformer(d, "tiny_mel_roformer.ckpt", kind="mel")
    # chain models: a VR karaoke model (Vocals = lead) and a de-reverb Roformer (noreverb / reverb)
    tiny_uvr.build_vr(d, "tiny_karaoke.pth", seed=1, primary_stem="Instrumental", is_karaoke=True)
    tiny_uvr.build_roformer(d, "tiny_dereverb.ckpt", kind="mel", seed=2, instruments=("noreverb", "reverb"),
                            target="noreverb")
    return d


@pytest.fixture(autouse=True)
def fresh_registry():
    registry.clear_cache()
    yield
    registry.clear_cache()


def ctx_for(tmp_path, events=None, cancel=None) -> StageContext:
    return StageContext("separate", tmp_path, on_event=events.append if events is not None else None,
                        should_cancel=cancel)


def engine(models, model, **kw):
    return registry.get_engine("separator", "uvr", model=model, model_dir=str(models), **kw)


@pytest.mark.parametrize("model,arch,kept", [
    ("tiny_mdx.onnx", "MDX", "Vocals"),
    ("tiny_vr.pth", "VR", "Vocals"),
    ("tiny_bs_roformer.ckpt", "MDXC", "vocals"),
    ("tiny_mel_roformer.ckpt", "MDXC", "vocals"),
])
def test_each_architecture_separates(models, tmp_path, model, arch, kept):
    song = tiny_uvr.song(SECONDS)
    events = []
    eng = engine(models, model)
    vocals, inst = eng.separate(song, SR, ctx_for(tmp_path, events))
    assert eng.arch == arch
    assert vocals.shape == inst.shape == song.shape and vocals.dtype == np.float32
    assert np.all(np.isfinite(vocals)) and np.all(np.isfinite(inst))
    assert 1e-4 < np.sqrt(np.mean(vocals ** 2)) < 2.0      # the net did something, nothing exploded
    np.testing.assert_allclose(vocals + inst, song, atol=1e-5)  # residual instrumental: sums back
    progress = [e.progress for e in events if e.type == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 3
    c = ctx_for(tmp_path)
    eng.separate(song[:, : SR // 2], SR, c)
    assert c.info["kept_stem"] == kept and c.info["arch"] == arch and c.info["device"] == "cpu"
    assert not list((tmp_path / "tmp").glob("*.wav"))  # the scratch input is removed


def test_song_rate_channels_length_come_back(models, tmp_path):
    """A mono 32 kHz song of odd length: stems at 32 kHz, mono, same length."""
    mono = tiny_uvr.song(1.5, sr=32000, channels=1)[:, :-7]
    vocals, inst = engine(models, "tiny_mdx.onnx").separate(mono, 32000, ctx_for(tmp_path))
    assert vocals.shape == inst.shape == mono.shape
    np.testing.assert_allclose(vocals + inst, mono, atol=1e-5)


def test_mdx_model_stems_sum_back(models, tmp_path):
    """residual=False gives the model's own instrumental; MDX-Net's is the song minus the vocal
    times ``compensate`` (1.0 here), so the two still sum back."""
    song = tiny_uvr.song(SECONDS)
    eng = engine(models, "tiny_mdx.onnx", residual=False)
    vocals, inst = eng.separate(song, SR, ctx_for(tmp_path))
    np.testing.assert_allclose(vocals + inst, song, atol=1e-4)
    stems = eng.stems(song, SR, ctx_for(tmp_path))
    assert sorted(stems) == ["Instrumental", "Vocals"]
    np.testing.assert_allclose(stems["Instrumental"], inst, atol=1e-6)


def test_mdx_through_torch_matches_onnxruntime(models, tmp_path):
    """mdx_runtime="torch" (what CUDA without onnxruntime-gpu uses): onnx2torch converts the same
    ONNX graph (torchvision is a stand-in here), and the stems match onnxruntime's."""
    song = tiny_uvr.song(1.0)
    a, _ = engine(models, "tiny_mdx.onnx").separate(song, SR, ctx_for(tmp_path))
    eng = engine(models, "tiny_mdx.onnx", mdx_runtime="torch")
    b, _ = eng.separate(song, SR, ctx_for(tmp_path))
    import torch
    assert isinstance(eng.library.model_instance.model_run, torch.nn.Module)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # onnx2torch holds the stand-in's ops (raising if ever called); the stand-in itself is gone
    # from sys.modules, so libraries probing for torchvision (transformers) do not see it
    import sys

    from onnx2torch.node_converters import nms
    tv = nms.torchvision
    if getattr(tv, "__stub__", False):
        assert "torchvision" not in sys.modules
        with pytest.raises(RuntimeError, match="not installed"):
            tv.ops.nms(None, None, 0.5)


def test_vr_net_chosen_from_the_weights_not_the_file_size():
    """RVC ships UVR's HP nets in float16 (HP2_all_vocals.pth, ~62 MB): by file size the library
    would build a VR 5.1 net (56817 KiB); the float32 size of the weights picks the HP net."""
    from audio_separator.separator.uvr_lib_v5.vr_network import nets
    from inference.engines.uvr import VR_ARCH_SIZES, _vr_arch_size
    net = nets.determine_model_capacity(672 * 2, 123821)
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    fp16_kib = sum(v.numel() * v.element_size() for v in half.values()) / 1024
    assert min(VR_ARCH_SIZES, key=lambda s: abs(s - fp16_kib)) == 56817
    assert _vr_arch_size(half) in (123821, 123812)


@pytest.mark.parametrize("names,role,expected", [
    (["Vocals", "Instrumental"], "vocals", "Vocals"),
    (["Instrumental", "Vocals"], "vocals", "Vocals"),
    (["vocals", "other"], "vocals", "vocals"),
    (["No Vocals", "Vocals"], "vocals", "Vocals"),
    (["Vocals", "Drums", "Bass", "Other"], "vocals", "Vocals"),
    (["Instrumental", "Vocals"], "lead", "Vocals"),           # karaoke: Vocals = the lead
    (["Lead Vocals", "Backing Vocals"], "lead", "Lead Vocals"),
    (["karaoke", "vocals"], "lead", "vocals"),
    (["No Reverb", "Reverb"], "dry", "No Reverb"),
    (["noreverb", "reverb"], "dry", "noreverb"),
    (["No Echo", "Echo"], "dry", "No Echo"),
    (["dry", "no dry"], "dry", "dry"),
    (["Reverb", "No Reverb"], "dry", "No Reverb"),
])
def test_pick_stem(names, role, expected):
    from inference.engines.uvr import pick_stem
    assert pick_stem(names, role) == expected
    assert pick_stem(names, role, override=names[-1].upper()) == names[-1]


def test_pick_stem_refusals():
    from inference.engines.uvr import pick_stem
    with pytest.raises(PipelineError, match="vocal_stem"):
        pick_stem(["male", "female"], "vocals", model="m.ckpt")
    with pytest.raises(PipelineError, match="no output stem 'Lead'"):
        pick_stem(["Vocals", "Instrumental"], "vocals", override="Lead")


def test_one_library_instance_per_model_across_calls(models, tmp_path):
    song = tiny_uvr.song(1.0)
    a = engine(models, "tiny_vr.pth")
    lib, arch_obj, net = a.library, a.library.model_instance, a.library.model_instance.model_run
    v1, _ = a.separate(song, SR, ctx_for(tmp_path))
    b = engine(models, "tiny_vr.pth")
    v2, _ = b.separate(song, SR, ctx_for(tmp_path))
    assert b is a and b.library is lib and b.library.model_instance is arch_obj
    assert b.library.model_instance.model_run is net  # weights loaded once, at construction
    assert registry.load_counts[("separator", "uvr")] == 1
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    engine(models, "tiny_mdx.onnx")
    assert registry.load_counts[("separator", "uvr")] == 2  # another model: its own instance


def test_cancel_between_chunks(models, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Canceled):
        engine(models, "tiny_bs_roformer.ckpt").separate(tiny_uvr.song(SECONDS), SR, ctx_for(tmp_path, cancel=cancel))
    assert len(calls) == 4


# ---- refusals ------------------------------------------------------------------------------
def _refused(code, *needles, **kw):
    with pytest.raises(PipelineError) as ei:
        registry.get_engine("separator", "uvr", **kw)
    assert ei.value.code == code and ei.value.stage == "separate", ei.value
    for n in needles:
        assert str(n) in ei.value.message, ei.value.message
    return ei.value


def test_missing_model_file(models):
    _refused("model_missing", "HP2_all_vocals.pth is missing", f"put it in {models}",
             model="HP2_all_vocals.pth", model_dir=str(models))
    _refused("model_missing", "HP2_all_vocals.pth / .onnx / .ckpt is missing", str(models),
             model="HP2_all_vocals", model_dir=str(models))  # the inherited COVER_UVR_MODEL has no extension
    _refused("model_missing", "no model folder", model="x.pth")
    _refused("model_missing", "needs a model file", model="")


def test_bare_name_finds_the_file(models):
    eng = registry.get_engine("separator", "uvr", model="tiny_vr", model_dir=str(models))
    assert eng.model_path == models / "tiny_vr.pth"


def test_missing_model_data_file(models, tmp_path):
    for src, json_name in (("tiny_vr.pth", "vr_model_data.json"), ("tiny_mdx.onnx", "mdx_model_data.json")):
        d = tmp_path / json_name.split("_")[0]
        d.mkdir()
        shutil.copy(models / src, d / src)
        _refused("model_missing", f"{json_name} is missing: put it in {d}", "model_data_new.json",
                 model=src, model_dir=str(d))
    # ... unless the entry is given directly
    entry = json.loads((models / "vr_model_data.json").read_text())[tiny_uvr.uvr_hash(models / "tiny_vr.pth")]
    eng = registry.get_engine("separator", "uvr", model="tiny_vr.pth", model_dir=str(tmp_path / "vr"),
                              model_data=entry)
    assert eng.arch == "VR"


def test_unknown_hash_in_model_data(models, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(models, d)
    p = tiny_uvr.build_vr(d, "unlisted.pth", seed=7, data=False)
    _refused("model_unknown", "unlisted.pth", tiny_uvr.uvr_hash(p), "vr_model_data.json",
             model="unlisted.pth", model_dir=str(d))


def test_missing_yaml(models, tmp_path):
    shutil.copy(models / "tiny_bs_roformer.ckpt", tmp_path / "tiny_bs_roformer.ckpt")
    _refused("model_missing", f"tiny_bs_roformer.yaml is missing: put it in {tmp_path}",
             model="tiny_bs_roformer.ckpt", model_dir=str(tmp_path))
    _refused("model_missing", "other.yaml is missing", model="tiny_bs_roformer.ckpt", model_dir=str(tmp_path),
             config="other.yaml")
    # the YAML name UVR's download_checks.json gives the model
    shutil.copy(models / "tiny_bs_roformer.yaml", tmp_path / "config_from_checks.yaml")
    (tmp_path / "download_checks.json").write_text(json.dumps(
        {"roformer_download_list": {"Roformer Model: tiny": {"tiny_bs_roformer.ckpt": "config_from_checks.yaml"}}}))
    eng = registry.get_engine("separator", "uvr", model="tiny_bs_roformer.ckpt", model_dir=str(tmp_path))
    assert eng.config_path == tmp_path / "config_from_checks.yaml"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_unsafe_pickle_refused_before_the_library_loads(models, tmp_path, monkeypatch):
    import torch
    marker = tmp_path / "executed"
    state = torch.load(models / "tiny_vr.pth", weights_only=True)
    bad = tmp_path / "evil.pth"
    torch.save({**state, "payload": _Evil(marker)}, bad)
    (tmp_path / "vr_model_data.json").write_text(json.dumps(
        {tiny_uvr.uvr_hash(bad): {"vr_model_param": "1band_sr44100_hl512", "nout": 8, "nout_lstm": 8}}))
    loaded = []
    from inference.engines import uvr
    monkeypatch.setattr(uvr.UvrSeparator, "_load", lambda *a, **k: loaded.append(1))
    err = _refused("model_unsafe", "evil.pth was refused", "weights_only=True", model="evil.pth",
                   model_dir=str(tmp_path))
    assert not marker.exists() and not loaded, err
    # a Roformer config that would build Python objects is refused too
    shutil.copy(models / "tiny_bs_roformer.ckpt", tmp_path / "r.ckpt")
    (tmp_path / "r.yaml").write_text("model: !!python/object/apply:os.system ['true']\ntraining: {}\n")
    _refused("model_unsafe", "r.yaml was refused", model="r.ckpt", model_dir=str(tmp_path))
    (tmp_path / "htdemucs_ft.yaml").write_text("models: ['a']\n")
    _refused("model_unsupported", "Demucs", "'demucs' separator", model="htdemucs_ft.yaml", model_dir=str(tmp_path))


def test_no_network_attempted(models, tmp_path, monkeypatch):
    """Loading and separating never reach for the network, and the library's download function
    refuses inside the engine."""
    import requests
    from inference.engines.uvr import DownloadRefused
    calls = []

    def no_network(*a, **k):
        calls.append(a)
        raise AssertionError(f"network call attempted: {a}")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setattr(requests.Session, "request", no_network)
    with netguard.blocked_attempts() as attempts:
        eng = engine(models, "tiny_mdx.onnx")
        eng.separate(tiny_uvr.song(1.0), SR, ctx_for(tmp_path))
        with pytest.raises(DownloadRefused, match="nothing is downloaded"):
            eng.library.download_file_if_not_exists("https://example.org/model_data_new.json",
                                                    str(tmp_path / "mdx_model_data.json"))
        with pytest.raises(DownloadRefused):
            eng.library.list_supported_model_files()
    assert attempts == [] and calls == []


# ---- the chain in the separate stage -------------------------------------------------------
def _voiced(seconds: float) -> np.ndarray:
    """tests.signals' song (a formant voice over chords and drums): the stage keeps its vocal."""
    from tests import signals
    return np.asarray(signals.song(seconds, SR)[0], dtype=np.float32)


def _pre(song) -> Preprocessed:
    return Preprocessed(song=song, sr=SR, reference=song[0], ref_sr=SR, original_sr=SR, original_channels=2,
                        original_samples=song.shape[1], original_duration=song.shape[1] / SR, song_format="wav",
                        reference_duration=1.0, reference_voice_seconds=1.0, song_path=Path("song.wav"),
                        reference_path=Path("reference.wav"))


def _cfg(models, **chain) -> PipelineConfig:
    opts = lambda m: {"model": m, "model_dir": str(models)}  # noqa: E731
    steps = {}
    if chain.pop("karaoke", False):
        steps["karaoke"] = {"engine": "uvr", "options": opts("tiny_karaoke.pth")}
    if chain.pop("dereverb", False):
        steps["dereverb"] = {"engine": "uvr", "options": opts("tiny_dereverb.ckpt")}
    steps.update(chain)
    return PipelineConfig(separator="uvr", engine_options={"uvr": opts("tiny_mdx.onnx")}, separation_chain=steps)


def _main_stems(models, song, tmp_path):
    out = separate.run(_pre(song), _cfg(models), ctx_for(tmp_path / "plain"))
    return out.vocals, out.instrumental


def test_karaoke_backing_goes_to_the_instrumental(models, tmp_path):
    song = _voiced(SECONDS)
    (tmp_path / "plain").mkdir()
    main_v, main_i = _main_stems(models, song, tmp_path)
    events = []
    ctx = ctx_for(tmp_path, events)
    out = separate.run(_pre(song), _cfg(models, karaoke=True), ctx)
    lead = separate.audio.read_wav(tmp_path / "lead_vocals.wav")[0]
    backing = separate.audio.read_wav(tmp_path / "backing_vocals.wav")[0]
    assert lead.shape == backing.shape == song.shape
    np.testing.assert_allclose(lead + backing, main_v, atol=1e-4)          # the vocal, split
    np.testing.assert_allclose(out.vocals, lead, atol=1e-4)                 # only the lead is converted
    np.testing.assert_allclose(out.instrumental, main_i + backing, atol=1e-4)  # backing mixed back unconverted
    np.testing.assert_allclose(out.vocals + out.instrumental, song, atol=1e-4)
    chain = ctx.info["chain"]
    assert chain["ran"] == ["karaoke"] and chain["karaoke"]["kept_stem"] == "Vocals"
    assert chain["karaoke"]["role"] == "lead" and "unconverted" in chain["backing"]
    assert ctx.info["kept_stem"] == "Vocals" and ctx.info["model"] == "tiny_mdx.onnx"  # the main separator's facts
    progress = [e.progress for e in events if e.type == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert any("karaoke" in e.message for e in events)
    assert 0.5 < max(p for p in progress if p < 0.99) <= 1.0  # the steps report past the separator's share


def test_convert_backing_keeps_it_in_the_vocal(models, tmp_path):
    song = _voiced(SECONDS)
    (tmp_path / "plain").mkdir()
    main_v, main_i = _main_stems(models, song, tmp_path)
    ctx = ctx_for(tmp_path)
    out = separate.run(_pre(song), _cfg(models, karaoke=True, convert_backing=True), ctx)
    np.testing.assert_allclose(out.vocals, main_v, atol=1e-4)  # lead + backing, both converted
    np.testing.assert_allclose(out.instrumental, main_i, atol=1e-5)
    assert (tmp_path / "backing_vocals.wav").exists() and "converted" in ctx.info["chain"]["backing"]


def test_dereverb_runs_on_the_lead(models, tmp_path, monkeypatch):
    song = _voiced(SECONDS)
    seen = {}
    dry = registry.get_engine("separator", "uvr", model="tiny_dereverb.ckpt", model_dir=str(models))
    original = dry.split

    def spy(x, sr, ctx, role="vocals", residual=None):
        seen["input"], seen["role"] = x.copy(), role
        kept, rest = original(x, sr, ctx, role, residual)
        seen["kept"] = kept
        return kept, rest

    monkeypatch.setattr(dry, "split", spy)
    ctx = ctx_for(tmp_path)
    out = separate.run(_pre(song), _cfg(models, karaoke=True, dereverb=True), ctx)
    lead = separate.audio.read_wav(tmp_path / "lead_vocals.wav")[0]
    removed = separate.audio.read_wav(tmp_path / "removed_reverb.wav")[0]
    np.testing.assert_allclose(seen["input"], lead, atol=1e-4)   # de-reverb got the karaoke's lead
    assert seen["role"] == "dry"
    np.testing.assert_allclose(out.vocals, seen["kept"], atol=1e-4)
    np.testing.assert_allclose(out.vocals + removed, lead, atol=1e-4)
    chain = ctx.info["chain"]
    assert chain["ran"] == ["karaoke", "dereverb"] and chain["dereverb"]["kept_stem"] == "noreverb"


def test_chain_refusals(models, tmp_path):
    song = tiny_uvr.song(0.5)
    with pytest.raises(PipelineError) as ei:
        separate.run(_pre(song), _cfg(models, reverb={"engine": "uvr"}), ctx_for(tmp_path))
    assert ei.value.code == "invalid_option" and "reverb" in ei.value.message
    cfg = PipelineConfig(separator="uvr", engine_options={"uvr": {"model": "tiny_mdx.onnx", "model_dir": str(models)}},
                         separation_chain={"karaoke": {"engine": "uvr", "options": {"model": "gone.pth",
                                                                                     "model_dir": str(models)}}})
    with pytest.raises(PipelineError) as ei:
        separate.run(_pre(_voiced(SECONDS)), cfg, ctx_for(tmp_path))
    assert ei.value.code == "model_missing" and "gone.pth is missing" in ei.value.message


def test_chain_is_part_of_the_stem_cache_key(models, tmp_path):
    from inference.stem_cache import FileStemCache
    song = _voiced(1.0)
    cache = FileStemCache(tmp_path / "cache")
    for i, (cfg, cached) in enumerate(((_cfg(models), False), (_cfg(models, karaoke=True), False),
                                       (_cfg(models, karaoke=True), True))):
        work = tmp_path / f"w{i}"
        work.mkdir()
        ctx = ctx_for(work)
        separate.run(_pre(song), cfg, ctx, cache=cache)
        assert bool(ctx.info.get("cached")) is cached, i
        if i:
            assert ctx.info["chain"]["ran"] == ["karaoke"]
