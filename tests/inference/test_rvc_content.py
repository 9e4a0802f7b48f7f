"""RVC content encoder (fairseq-format HuBERT / transformers folder) and RMVPE on tiny real-format models."""
from __future__ import annotations

import enum
import os
import sys
import types

import numpy as np
import pytest
import torch

from inference.engines.rvc import rmvpe as rmvpe_mod
from inference.engines.rvc.content import (ContentEncoderError, inspect_content_encoder,
                                           load_content_encoder)
from inference.engines.rvc.rmvpe import RmvpeError, decode_salience, load_rmvpe
from tests.inference.tiny_rvc_content import (make_tiny_hubert_fairseq, make_tiny_hubert_transformers,
                                              make_tiny_rmvpe, tiny_hubert_state)

SR = 16000


def _wav(seconds: float, seed: int = 0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.02 * torch.randn(t.shape, generator=g)).unsqueeze(0)


def _conv_frames(n: int) -> int:
    for k, s in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        n = (n - k) // s + 1
    return n


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("rvc_content")
    return {
        "args": make_tiny_hubert_fairseq(d / "hubert_args.pt", flavour="args"),
        "cfg": make_tiny_hubert_fairseq(d / "hubert_cfg.pt", flavour="cfg"),
        "rmvpe": make_tiny_rmvpe(d / "rmvpe.pt"),
        "dir": d,
    }


@pytest.mark.parametrize("flavour", ["args", "cfg"])
def test_fairseq_checkpoint_gives_rvc_shapes(tiny, flavour):
    enc = load_content_encoder(tiny[flavour])
    assert (enc.format, enc.layers, enc.dim, enc.has_final_proj) == ("fairseq", 2, 768, True)
    for seconds in (1.0, 2.37):
        wav = _wav(seconds)
        v1, v2 = enc.extract(wav, "v1"), enc.extract(wav, "v2")
        frames = _conv_frames(wav.shape[-1])
        assert v1.shape == (1, frames, 256) and v2.shape == (1, frames, 768)
        assert enc.frames(wav.shape[-1]) == frames
        assert torch.isfinite(v2).all() and v2.std() > 0.1
    assert abs(_conv_frames(SR * 10) - SR * 10 / 320) <= 1


def test_args_and_cfg_flavours_and_shape_inference_agree(tiny, tmp_path):
    wav = _wav(1.0)
    a = load_content_encoder(tiny["args"]).extract(wav, "v2")
    b = load_content_encoder(tiny["cfg"]).extract(wav, "v2")
    assert torch.equal(a, b)
    # no args and no cfg at all: everything inferred from the tensors (heads = dim // 64 = 12)
    ckpt = torch.load(tiny["cfg"], weights_only=True)
    torch.save({"model": ckpt["model"]}, tmp_path / "bare.pt")
    c = load_content_encoder(tmp_path / "bare.pt").extract(wav, "v2")
    assert torch.equal(a, c)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_transformers_folder_matches_fairseq_on_same_weights(tiny, tmp_path, weights):
    # the fairseq file stores float16 like the community's hubert_base.pt: convert those same values
    state = {k: v.float() for k, v in torch.load(tiny["cfg"], weights_only=True)["model"].items()}
    folder = make_tiny_hubert_transformers(tmp_path / "hubert_hf", state=state, weights=weights)
    hf = load_content_encoder(folder)
    assert (hf.format, hf.layers, hf.dim, hf.has_final_proj) == ("transformers", 2, 768, True)
    fs = load_content_encoder(tiny["args"])
    wav = _wav(1.5, seed=3)
    for version, dim in (("v1", 256), ("v2", 768)):
        x, y = fs.extract(wav, version), hf.extract(wav, version)
        assert x.shape == y.shape == (1, _conv_frames(wav.shape[-1]), dim)
        assert (x - y).abs().max().item() < 1e-4
    info = inspect_content_encoder(folder)
    assert info["format"] == "transformers" and info["dim"] == 768 and info["has_final_proj"]
    assert len(info["sha256"]) == 64


def test_layer_norm_extractor_mode_and_v2_only_model(tmp_path):
    path = make_tiny_hubert_fairseq(tmp_path / "ln.pt", layers=1, final_proj_dim=None,
                                    extractor_mode="layer_norm")
    enc = load_content_encoder(path)
    wav = _wav(1.0)
    assert enc.extract(wav, "v2").shape == (1, 49, 768)
    with pytest.raises(ContentEncoderError, match="final_proj"):
        enc.extract(wav, "v1")
    info = inspect_content_encoder(path)
    assert (info["format"], info["layers"], info["has_final_proj"]) == ("fairseq", 1, False)


def test_omegaconf_and_enum_config_objects_are_read_as_plain_values(tmp_path, monkeypatch):
    """cfg holding omegaconf-like containers and a fairseq enum: read through inert stand-ins."""
    fake_oc = types.ModuleType("omegaconf")
    fake_dc = types.ModuleType("omegaconf.dictconfig")
    fake_fs = types.ModuleType("fairseq")
    fake_fsd = types.ModuleType("fairseq.dataclass")
    fake_fsc = types.ModuleType("fairseq.dataclass.constants")

    class DictConfig:  # pickled by reference as omegaconf.dictconfig.DictConfig
        def __init__(self, content):
            self._content = content
            self._metadata = None

    class Choices(enum.Enum):
        default = "default"
        layer_norm = "layer_norm"

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    Choices.__module__, Choices.__qualname__ = "fairseq.dataclass.constants", "Choices"
    fake_dc.DictConfig, fake_fsc.Choices = DictConfig, Choices
    for name, mod in (("omegaconf", fake_oc), ("omegaconf.dictconfig", fake_dc), ("fairseq", fake_fs),
                      ("fairseq.dataclass", fake_fsd), ("fairseq.dataclass.constants", fake_fsc)):
        monkeypatch.setitem(sys.modules, name, mod)
    state = {k: v.half() for k, v in tiny_hubert_state(layers=1, seed=5).items()}
    model_cfg = DictConfig({"encoder_attention_heads": 4, "extractor_mode": Choices.default,
                            "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"})
    torch.save({"model": state, "args": None, "cfg": DictConfig({"model": model_cfg})}, tmp_path / "oc.pt")
    for name in ("omegaconf", "omegaconf.dictconfig", "fairseq", "fairseq.dataclass", "fairseq.dataclass.constants"):
        monkeypatch.delitem(sys.modules, name)  # loading must not need them
    got = load_content_encoder(tmp_path / "oc.pt").extract(_wav(1.0), "v2")
    # the same weights with 4 heads given through an argparse.Namespace
    ref_path = make_tiny_hubert_fairseq(tmp_path / "ref.pt", layers=1, seed=5, heads=4)
    ref = load_content_encoder(ref_path).extract(_wav(1.0), "v2")
    assert torch.equal(got, ref)
    twelve = load_content_encoder(make_tiny_hubert_fairseq(tmp_path / "h12.pt", layers=1, seed=5)).extract(
        _wav(1.0), "v2")
    assert not torch.allclose(got, twelve)  # the heads setting really came from the omegaconf cfg


# ---------------------------------------------------------------------------------------- refusals


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_checkpoint_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    state = {k: v.half() for k, v in tiny_hubert_state(layers=1).items()}
    torch.save({"model": state, "args": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ContentEncoderError, match=r"refused.*system"):
        load_content_encoder(tmp_path / "evil.pt")
    with pytest.raises(ContentEncoderError, match=r"refused.*system"):
        inspect_content_encoder(tmp_path / "evil.pt")
    assert not marker.exists()


def test_refuses_checkpoint_without_model_entry(tmp_path):
    torch.save({"args": None, "cfg": {"model": {}}}, tmp_path / "nomodel.pt")
    with pytest.raises(ContentEncoderError, match="has no 'model' entry"):
        load_content_encoder(tmp_path / "nomodel.pt")


def test_refuses_checkpoint_missing_a_layer_weight(tiny, tmp_path):
    ckpt = torch.load(tiny["cfg"], weights_only=True)
    del ckpt["model"]["encoder.layers.1.fc2.weight"]
    torch.save(ckpt, tmp_path / "holed.pt")
    with pytest.raises(ContentEncoderError, match=r"'encoder\.layers\.1\.fc2\.weight'"):
        load_content_encoder(tmp_path / "holed.pt")


def test_refuses_folder_without_config_json(tiny, tmp_path):
    folder = make_tiny_hubert_transformers(tmp_path / "hf", layers=1)
    (folder / "config.json").unlink()
    with pytest.raises(ContentEncoderError, match="no config.json"):
        load_content_encoder(folder)


def test_refuses_folder_without_weights_file(tmp_path):
    folder = make_tiny_hubert_transformers(tmp_path / "hf", layers=1)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ContentEncoderError, match="model.safetensors or pytorch_model.bin"):
        load_content_encoder(folder)


def test_refuses_missing_path_and_non_torch_file(tmp_path):
    with pytest.raises(ContentEncoderError, match="does not exist"):
        load_content_encoder(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    with pytest.raises(ContentEncoderError, match="text.pt: not a readable torch"):
        load_content_encoder(tmp_path / "text.pt")


# ------------------------------------------------------------------------------------------ RMVPE


def test_rmvpe_tracks_at_100_frames_per_second(tiny):
    model = load_rmvpe(tiny["rmvpe"])
    for seconds in (1.0, 2.5):
        wav = _wav(seconds)[0].numpy()
        f0 = model.f0(wav)
        assert f0.dtype == np.float32 and f0.shape == (len(wav) // 160 + 1,)
        assert np.all(f0 >= 0) and np.all(np.isfinite(f0))
    assert model.salience(_wav(1.0)[0].numpy()).shape == (101, 360)


def test_rmvpe_decode_gives_the_bin_frequency():
    n = 360
    sal = np.zeros((5, n), np.float32)
    sal[0, 100] = 0.9                       # lone peak -> that bin's cents
    sal[1, 200], sal[1, 201] = 0.8, 0.8     # two equal bins -> halfway (10 cents up)
    sal[2, 0], sal[2, 1] = 0.9, 0.3         # at the lower edge (padding counts as zero)
    sal[3, 50] = 0.02                       # below the threshold -> unvoiced
    # frame 4: all zero -> unvoiced
    f0 = decode_salience(sal, threshold=0.03)

    def hz(cents):
        return 10 * 2 ** (cents / 1200)

    assert f0[0] == pytest.approx(hz(1997.3794084376191 + 20 * 100), rel=1e-5)
    assert f0[1] == pytest.approx(hz(1997.3794084376191 + 20 * 200 + 10), rel=1e-5)
    assert f0[2] == pytest.approx(hz(1997.3794084376191 + 20 * 0.3 / 1.2), rel=1e-5)
    assert f0[3] == 0 and f0[4] == 0
    assert 31.6 < f0[2] < 32.5 and f0[0] == pytest.approx(100.64, abs=0.01)


def test_rmvpe_windows_match_a_single_pass(tmp_path, monkeypatch):
    """Long inputs run in windows; on a net whose receptive field fits the margin the result is the same."""
    path = make_tiny_rmvpe(tmp_path / "rmvpe_nogru.pt", n_gru=0, en_de_layers=3, en_out_channels=4)
    model = load_rmvpe(path)
    wav = _wav(4.0)[0].numpy()
    whole = model.salience(wav)
    monkeypatch.setattr(rmvpe_mod, "SINGLE_PASS_FRAMES", 128)
    monkeypatch.setattr(rmvpe_mod, "CHUNK_FRAMES", 96)
    monkeypatch.setattr(rmvpe_mod, "MARGIN_FRAMES", 64)
    windowed = model.salience(wav)
    assert windowed.shape == whole.shape == (401, 360)
    assert np.abs(windowed - whole).max() < 1e-5


def test_rmvpe_refuses_file_missing_keys(tiny, tmp_path):
    state = torch.load(tiny["rmvpe"], weights_only=True)
    for key in ("cnn.weight", "unet.decoder.layers.2.conv2.0.conv.1.running_var", "unet.encoder.bn.weight"):
        holed = {k: v for k, v in state.items() if k != key}
        torch.save(holed, tmp_path / "holed.pt")
        with pytest.raises(RmvpeError, match=f"has no '{key}' entry"):
            load_rmvpe(tmp_path / "holed.pt")


def test_rmvpe_refuses_code_and_non_state_dicts(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"cnn.weight": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RmvpeError, match="not a loadable RMVPE state dict"):
        load_rmvpe(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(RmvpeError, match="not a state dict"):
        load_rmvpe(tmp_path / "list.pt")
    with pytest.raises(RmvpeError, match="does not exist"):
        load_rmvpe(tmp_path / "nope.pt")
