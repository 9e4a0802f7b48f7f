"""RVC voice-model files: tiny random-weight .pth files in the real format through the real reader.

Parity with RVC-Project's own synthesizer classes is shown in bench/rvc_parity.py (it needs
upstream's code, which is not part of this project).
"""
from __future__ import annotations

import argparse
import hashlib
import os

import pytest
import torch

from inference.engines.rvc.checkpoint import (
    RvcCheckpoint,
    RvcFormatError,
    build_synthesizer,
    inspect_rvc_checkpoint,
    read_rvc_checkpoint,
)
from tests.inference.tiny_rvc_synth import make_tiny_rvc

VARIANTS = [(v, f0, sr) for v in ("v1", "v2") for f0 in (True, False) for sr in (32000, 40000, 48000)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rvc")
    made: dict[tuple, object] = {}

    def get(version="v2", f0=True, sr=40000):
        key = (version, f0, sr)
        if key not in made:
            made[key] = make_tiny_rvc(folder / f"{version}_{int(f0)}_{sr}.pth", version=version, f0=f0, sr=sr)
        return made[key]

    return get


def _inputs(ckpt: RvcCheckpoint, frames: int = 50):
    phone = torch.randn(1, frames, ckpt.feature_dim, generator=torch.Generator().manual_seed(1))
    f0 = torch.full((1, frames), 220.0)
    f0[:, frames // 2 : frames // 2 + 8] = 0.0  # an unvoiced stretch
    pitch = torch.full((1, frames), 60, dtype=torch.long)
    return phone, torch.tensor([frames]), pitch, f0, torch.tensor([0])


def _rewrite(src, dst, **changes):
    data = torch.load(src, weights_only=True)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    torch.save(data, dst)
    return dst


@pytest.mark.parametrize("version,f0,sr", VARIANTS)
def test_each_variant_loads_and_synthesizes(tiny, version, f0, sr):
    path = tiny(version, f0, sr)
    ckpt, state = read_rvc_checkpoint(path)
    assert (ckpt.version, ckpt.f0, ckpt.sr) == (version, f0, sr)
    assert ckpt.feature_dim == (768 if version == "v2" else 256)
    assert ckpt.n_speakers == 2 and len(ckpt.config) == 18 and ckpt.config[-1] == sr
    assert ckpt.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert any(k.endswith("weight_g") for k in state) and state["emb_g.weight"].dtype == torch.float16
    model = build_synthesizer(ckpt, state)
    assert (model.sr, model.f0, model.version) == (sr, f0, version)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    audio = model.infer(*_inputs(ckpt))
    assert audio.shape == (1, 1, 50 * sr // 100)
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0 and audio.std() > 1e-4


def test_inspect_reports_the_file_facts(tiny):
    facts = inspect_rvc_checkpoint(tiny("v1", False, 48000))
    assert facts["kind"] == "rvc" and facts["version"] == "v1" and facts["f0"] is False
    assert facts["sr"] == 48000 and facts["feature_dim"] == 256 and facts["n_speakers"] == 2
    assert facts["params"] > 10_000 and len(facts["sha256"]) == 64 and facts["info"]


def test_same_seed_same_audio_and_noise_scale(tiny):
    ckpt, state = read_rvc_checkpoint(tiny("v2", True, 40000))
    model = build_synthesizer(ckpt, state)
    args = _inputs(ckpt)
    torch.manual_seed(3)
    a = model.infer(*args)
    torch.manual_seed(3)
    b = model.infer(*args)
    torch.manual_seed(4)
    c = model.infer(*args)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Without pitch there is no source noise: noise_scale=0 makes the output seed-independent.
    ckpt, state = read_rvc_checkpoint(tiny("v2", False, 40000))
    model = build_synthesizer(ckpt, state)
    torch.manual_seed(1)
    d = model.infer(*_inputs(ckpt), noise_scale=0.0)
    torch.manual_seed(2)
    e = model.infer(*_inputs(ckpt), noise_scale=0.0)
    torch.manual_seed(2)
    f = model.infer(*_inputs(ckpt))
    assert torch.equal(d, e) and not torch.equal(d, f)


def test_skip_head_returns_only_the_asked_frames(tiny):
    ckpt, state = read_rvc_checkpoint(tiny("v1", True, 32000))
    model = build_synthesizer(ckpt, state)
    audio = model.infer(*_inputs(ckpt, 80), skip_head=30, return_length=40)
    assert audio.shape == (1, 1, 40 * 320) and torch.isfinite(audio).all()


def test_pitch_guided_model_needs_pitch(tiny):
    ckpt, state = read_rvc_checkpoint(tiny("v2", True, 40000))
    phone, lengths, _, _, sid = _inputs(ckpt)
    with pytest.raises(ValueError, match="pitch and nsff0 are required"):
        build_synthesizer(ckpt, state).infer(phone, lengths, None, None, sid)


def test_half_on_cpu_is_ignored(tiny):
    ckpt, state = read_rvc_checkpoint(tiny("v2", True, 40000))
    model = build_synthesizer(ckpt, state, device="cpu", half=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.infer(*_inputs(ckpt)).dtype == torch.float32


def test_parametrizations_spelling_of_weight_norm_loads_the_same(tiny, tmp_path):
    src = tiny("v2", True, 40000)
    data = torch.load(src, weights_only=True)
    renamed = {}
    for key, value in data["weight"].items():
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        renamed[key.replace(".weight_v", ".parametrizations.weight.original1")] = value
    path = _rewrite(src, tmp_path / "param.pth", weight=renamed)
    outs = []
    for p in (src, path):
        ckpt, state = read_rvc_checkpoint(p)
        torch.manual_seed(0)
        outs.append(build_synthesizer(ckpt, state).infer(*_inputs(ckpt)))
    assert torch.equal(outs[0], outs[1])


def test_legacy_non_zip_torch_file_loads(tiny, tmp_path):
    data = torch.load(tiny("v1", True, 40000), weights_only=True)
    path = tmp_path / "legacy.pth"
    torch.save(data, path, _use_new_zipfile_serialization=False)  # files saved by old torch versions
    ckpt, state = read_rvc_checkpoint(path)
    assert ckpt.version == "v1" and ckpt.sr == 40000 and "emb_g.weight" in state


def test_version_absent_means_v1(tiny, tmp_path):
    path = _rewrite(tiny("v1", True, 40000), tmp_path / "old.pth", version=None)
    assert read_rvc_checkpoint(path)[0].version == "v1"


# ---- refusals: each names what is missing or wrong -----------------------------------------


def test_refuses_a_file_that_is_not_a_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(RvcFormatError, match=r"list\.pth holds a list, not an RVC model dict"):
        read_rvc_checkpoint(path)


def test_refuses_missing_weight(tiny, tmp_path):
    path = _rewrite(tiny(), tmp_path / "voice.pth", weight=None)
    with pytest.raises(RvcFormatError, match=r"voice\.pth has no 'weight' entry"):
        read_rvc_checkpoint(path)


def test_refuses_missing_config(tiny, tmp_path):
    path = _rewrite(tiny(), tmp_path / "voice.pth", config=None)
    with pytest.raises(RvcFormatError, match=r"voice\.pth has no 'config' entry"):
        read_rvc_checkpoint(path)


def test_refuses_config_of_the_wrong_length(tiny, tmp_path):
    cfg = torch.load(tiny(), weights_only=True)["config"]
    path = _rewrite(tiny(), tmp_path / "voice.pth", config=cfg[:-1])
    with pytest.raises(RvcFormatError, match="'config' has 17 entries, an RVC model has 18"):
        read_rvc_checkpoint(path)


def test_refuses_sample_rate_the_upsampling_cannot_make(tiny, tmp_path):
    cfg = torch.load(tiny(), weights_only=True)["config"]
    path = _rewrite(tiny(), tmp_path / "voice.pth", config=cfg[:-1] + [44100])
    with pytest.raises(RvcFormatError, match="sample rate 44100 needs 441"):
        read_rvc_checkpoint(path)


@pytest.mark.parametrize("real,claimed", [("v2", "v1"), ("v1", "v2")])
def test_refuses_feature_dim_that_does_not_match_the_version(tiny, tmp_path, real, claimed):
    path = _rewrite(tiny(real, True, 40000), tmp_path / "voice.pth", version=claimed)
    want, got = (256, 768) if claimed == "v1" else (768, 256)
    with pytest.raises(RvcFormatError, match=f"version {claimed} expects {want}-dim .* takes {got} .*is 'version' wrong"):
        read_rvc_checkpoint(path)


def test_refuses_pitch_flag_without_pitch_weights(tiny, tmp_path):
    path = _rewrite(tiny("v2", False, 40000), tmp_path / "voice.pth", f0=1)
    with pytest.raises(RvcFormatError, match="f0=1 .* no enc_p.emb_pitch and no dec.m_source weights"):
        read_rvc_checkpoint(path)


def test_refuses_no_pitch_flag_with_pitch_weights(tiny, tmp_path):
    path = _rewrite(tiny("v2", True, 40000), tmp_path / "voice.pth", f0=0)
    with pytest.raises(RvcFormatError, match="f0=0 .* has pitch weights"):
        read_rvc_checkpoint(path)


@pytest.mark.parametrize("group", ["enc_p", "dec", "flow", "emb_g"])
def test_refuses_a_missing_key_group(tiny, tmp_path, group):
    weights = torch.load(tiny(), weights_only=True)["weight"]
    kept = {k: v for k, v in weights.items() if not k.startswith(group + ".")}
    path = _rewrite(tiny(), tmp_path / "voice.pth", weight=kept)
    with pytest.raises(RvcFormatError, match=f"has no {group} weights"):
        read_rvc_checkpoint(path)


def test_refuses_a_missing_single_weight_naming_it(tiny, tmp_path):
    weights = torch.load(tiny(), weights_only=True)["weight"]
    del weights["dec.conv_post.weight"]
    path = _rewrite(tiny(), tmp_path / "voice.pth", weight=weights)
    with pytest.raises(RvcFormatError, match=r"lacks 1 entries the config calls for: dec\.conv_post\.weight"):
        read_rvc_checkpoint(path)


def test_refuses_half_a_weight_norm_pair(tiny, tmp_path):
    weights = torch.load(tiny(), weights_only=True)["weight"]
    del weights["dec.ups.0.weight_g"]
    path = _rewrite(tiny(), tmp_path / "voice.pth", weight=weights)
    with pytest.raises(RvcFormatError, match=r"dec\.ups\.0\.weight_g is missing \(weight-norm pair incomplete\)"):
        read_rvc_checkpoint(path)


def test_refuses_weights_that_do_not_fit_the_config(tiny, tmp_path):
    cfg = torch.load(tiny(), weights_only=True)["config"]
    cfg[4] = cfg[4] * 2  # filter_channels
    path = _rewrite(tiny(), tmp_path / "voice.pth", config=cfg)
    with pytest.raises(RvcFormatError, match=r"do not match the config, e\.g\. enc_p\.encoder\.ffn_layers\.0\.conv_1\.weight"):
        read_rvc_checkpoint(path)


def test_refuses_a_training_checkpoint(tiny, tmp_path):
    weights = torch.load(tiny(), weights_only=True)["weight"]
    path = tmp_path / "G_2333.pth"
    torch.save({"model": weights, "iteration": 2333, "optimizer": {"state": {}, "param_groups": []},
                "learning_rate": 1e-4}, path)
    with pytest.raises(RvcFormatError, match=r"G_2333\.pth is an RVC training checkpoint .* export the small model"):
        read_rvc_checkpoint(path)


def test_refuses_another_vocoder(tiny, tmp_path):
    path = _rewrite(tiny(), tmp_path / "voice.pth", vocoder="RefineGAN")
    with pytest.raises(RvcFormatError, match="'RefineGAN' vocoder"):
        read_rvc_checkpoint(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_pickle_that_would_run_code(tiny, tmp_path):
    marker = tmp_path / "ran"
    data = torch.load(tiny(), weights_only=True)
    data["info"] = _RunsCode(marker)
    path = tmp_path / "evil.pth"
    torch.save(data, path)
    with pytest.raises(RvcFormatError, match=r"evil\.pth needs '(posix|os)\.system' to load; .* refused"):
        read_rvc_checkpoint(path)
    assert not marker.exists()


def test_refuses_a_pickle_holding_a_class_instance(tiny, tmp_path):
    data = torch.load(tiny(), weights_only=True)
    data["info"] = argparse.Namespace(epoch=300)
    path = tmp_path / "obj.pth"
    torch.save(data, path)
    with pytest.raises(RvcFormatError, match=r"obj\.pth needs 'argparse\.Namespace' to load"):
        read_rvc_checkpoint(path)


def test_refuses_a_file_that_is_not_torch(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a model")
    with pytest.raises(RvcFormatError, match=r"notes\.pth is not a readable PyTorch file"):
        read_rvc_checkpoint(path)


def test_refuses_a_missing_file(tmp_path):
    with pytest.raises(RvcFormatError, match=r"gone\.pth: no such file"):
        read_rvc_checkpoint(tmp_path / "gone.pth")
