"""Separators on generated audio: the weight-free ``spectral`` engine and ``demucs`` with a
tiny random-weight HTDemucs built here and loaded through the real engine."""
from __future__ import annotations

import numpy as np
import pytest

from inference.context import StageContext
from inference.errors import Canceled, PipelineError
from inference.registry import clear_cache, get_engine
from tests import signals

SR = 22050  # half rate keeps the tests quick; the engine adapts its window to the rate


def sdr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / (np.sum((ref - est) ** 2) + 1e-12)))


def make_ctx(tmp_path, events=None, cancel=None) -> StageContext:
    return StageContext("separate", tmp_path, on_event=(events.append if events is not None else None),
                        should_cancel=cancel)


@pytest.fixture(scope="module")
def stereo_song():
    return signals.song(6.0, SR, seed=0)


@pytest.fixture()
def spectral():
    return get_engine("separator", "spectral")


def check_stems(song, vocals, instrumental):
    assert vocals.shape == song.shape and instrumental.shape == song.shape
    assert vocals.dtype == np.float32 and instrumental.dtype == np.float32
    assert np.all(np.isfinite(vocals)) and np.all(np.isfinite(instrumental))
    assert np.max(np.abs(vocals + instrumental - song)) < 1e-5


def test_spectral_separates_centre_voice(tmp_path, spectral, stereo_song):
    mix, vocal, inst, _ = stereo_song
    events = []
    ctx = make_ctx(tmp_path, events)
    v, i = spectral.separate(mix, SR, ctx)
    check_stems(mix, v, i)
    gain_v = sdr(vocal, v) - sdr(vocal, mix)
    gain_i = sdr(inst, i) - sdr(inst, mix)
    assert gain_v > 3.0, gain_v
    assert gain_i > 1.0, gain_i
    fractions = [e.progress for e in events if e.type == "progress"]
    assert fractions and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert ctx.info["engine"] == "spectral" and ctx.info["n_fft"] > 0


def test_spectral_mono_input(tmp_path, spectral, stereo_song):
    mix, vocal, _, _ = stereo_song
    mono, vmono = mix.mean(axis=0, keepdims=True), vocal.mean(axis=0, keepdims=True)
    v, i = spectral.separate(mono, SR, make_ctx(tmp_path))
    check_stems(mono, v, i)
    assert sdr(vmono, v) > sdr(vmono, mono)


def test_spectral_long_song_is_chunked(tmp_path):
    eng = get_engine("separator", "spectral", chunk_s=3.0, overlap_s=1.0)
    mix, vocal, _, _ = signals.song(8.0, SR, seed=1)
    ctx = make_ctx(tmp_path)
    v, i = eng.separate(mix, SR, ctx)
    check_stems(mix, v, i)
    assert ctx.info["chunks"] >= 2
    assert sdr(vocal, v) > sdr(vocal, mix) + 2.0


def test_spectral_silence_and_tiny_inputs(tmp_path, spectral):
    silent = np.zeros((2, SR * 2), dtype=np.float32)
    v, i = spectral.separate(silent, SR, make_ctx(tmp_path))
    assert not np.any(v) and not np.any(i)
    for n in (1, 100, 3000):
        x = (0.1 * np.random.default_rng(n).standard_normal((2, n))).astype(np.float32)
        v, i = spectral.separate(x, SR, make_ctx(tmp_path))
        check_stems(x, v, i)


def test_spectral_cancel(tmp_path, spectral, stereo_song):
    mix = stereo_song[0]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Canceled):
        spectral.separate(mix, SR, make_ctx(tmp_path, cancel=cancel))


# -- demucs -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_demucs_repo(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state, save_with_checksum

    torch.manual_seed(0)
    kwargs = dict(sources=["drums", "bass", "other", "vocals"], channels=8, depth=2, nfft=512,
                  dconv_comp=4, t_layers=1, t_heads=1, t_hidden_scale=1)
    model = HTDemucs(**kwargs)
    pkg = {"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": get_state(model, None),
           "training_args": {}}
    repo = tmp_path_factory.mktemp("demucs_repo")
    save_with_checksum(pkg, repo / "tiny.th")
    return repo


def test_demucs_tiny_model_end_to_end(tmp_path, tiny_demucs_repo):
    clear_cache()
    names = [p.name for p in tiny_demucs_repo.iterdir()]
    assert len(names) == 1 and names[0].startswith("tiny-")
    eng = get_engine("separator", "demucs", repo=str(tiny_demucs_repo), name="tiny", device="cpu")
    sr = 44100
    mix = signals.song(3.0, sr)[0]
    events = []
    ctx = make_ctx(tmp_path, events)
    v, i = eng.separate(mix, sr, ctx)
    check_stems(mix, v, i)
    assert np.any(v)
    fractions = [e.progress for e in events if e.type == "progress"]
    assert len(fractions) >= 3 and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert ctx.info["model"] == "tiny"
    # mono at another rate goes through the same model
    mono = signals.song(2.0, 22050)[0].mean(axis=0, keepdims=True)
    v, i = eng.separate(mono, 22050, make_ctx(tmp_path))
    check_stems(mono, v, i)
    # the same options give the same loaded instance
    assert get_engine("separator", "demucs", repo=str(tiny_demucs_repo), name="tiny", device="cpu") is eng


def test_demucs_cancel(tmp_path, tiny_demucs_repo):
    eng = get_engine("separator", "demucs", repo=str(tiny_demucs_repo), name="tiny", device="cpu")
    mix = signals.song(3.0, 44100)[0]
    with pytest.raises(Canceled):
        eng.separate(mix, 44100, make_ctx(tmp_path, cancel=lambda: True))


@pytest.mark.parametrize("case", ["missing_name", "missing_repo", "no_repo", "corrupt"])
def test_demucs_missing_or_bad_checkpoint(tmp_path, tiny_demucs_repo, case):
    from inference.engines.demucs_engine import DemucsSeparator

    kwargs = dict(repo=str(tiny_demucs_repo), name="nosuchmodel")
    if case == "missing_repo":
        kwargs = dict(repo=str(tmp_path / "absent"), name="tiny")
    elif case == "no_repo":
        kwargs = dict(repo=None)
    elif case == "corrupt":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "broken-0123abcd.th").write_bytes(b"not a checkpoint")
        kwargs = dict(repo=str(bad), name="broken")
    with pytest.raises(PipelineError) as err:
        DemucsSeparator(**kwargs)
    assert err.value.stage == "separate"
    assert str(err.value).startswith("separate: ")


class _RunsCode:
    """Unpickling this would run code (write a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import builtins
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("where", ["payload", "klass"])
def test_a_demucs_package_that_would_run_code_is_refused_unread(tmp_path, tiny_demucs_repo, where):
    """demucs' own loader unpickles with weights_only=False; ours allows only its model classes."""
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import get_state

    from inference.engines.demucs_engine import DemucsSeparator

    marker = tmp_path / "pwned"
    kwargs = dict(sources=["drums", "bass", "other", "vocals"], channels=8, depth=2, nfft=512,
                  dconv_comp=4, t_layers=1, t_heads=1, t_hidden_scale=1)
    pkg = {"klass": HTDemucs, "args": (), "kwargs": kwargs, "state": get_state(HTDemucs(**kwargs), None),
           "training_args": {}}
    if where == "payload":
        pkg["training_args"] = _RunsCode(marker)
    else:
        pkg["klass"] = dict   # a class that is not a demucs model
    repo = tmp_path / "repo"
    repo.mkdir()
    torch.save(pkg, repo / "evil.th")
    with pytest.raises(PipelineError) as err:
        DemucsSeparator(repo=str(repo), name="evil", device="cpu")
    assert err.value.code in ("model_unsafe",) and "refused" in str(err.value)
    assert not marker.exists()
