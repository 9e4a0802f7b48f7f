"""Per-job quality report: does the converted vocal sing the input's melody, in the reference's voice?

``assess(converted, input_vocal, sr, reference, ref_sr, pitch_shift, device=...)`` returns a
:class:`QualityReport`:

- ``pitch_accuracy``: the share of the frames sung in the input vocal (crepe periodicity above
  :data:`INPUT_VOICING` and within :data:`INPUT_GATE_DB` of the loud singing, so accompaniment
  leaking into a separated stem is not taken for the melody) whose converted F0 lies
  within 50 cents of the input F0 moved by ``pitch_shift`` semitones and ``octave_shift`` whole
  octaves (the octaves ``auto_pitch`` applied; when the engine does not say, and ``auto_pitch``
  was asked for, the one whole-octave offset that fits best over the whole vocal is used). A
  converted frame that is silent or unvoiced where the input sings counts as a miss. F0 comes from
  the crepe tracker (:func:`inference.engines.pitch.track_f0`).
- ``speaker_similarity``: cosine similarity of Resemblyzer's speaker embeddings of the converted
  vocal and the reference (0..1 in practice; the embeddings are non-negative). For context
  ``original_similarity`` is the same figure for the input vocal, so "0.78 after, 0.55 before"
  says the conversion moved the voice toward the reference.
- ``quality_warning``: pitch accuracy under :data:`PITCH_WARNING_BELOW` (0.85).

Vocals longer than :data:`SAMPLE_SECONDS` (plus one window) are measured on windows spread evenly
over them (the report says so in ``sampled_seconds``): the figures are estimates either way, and
the full tracks cost about as much as the conversion.

Figures that cannot be measured (silent vocal, too little voice) are ``None`` with a note saying
why; ``assess`` never raises for such inputs. The Resemblyzer encoder (weights ship inside its
PyPI package) is loaded once per process and device.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger("inference.quality")

PITCH_TOLERANCE_CENTS = 50.0
PITCH_WARNING_BELOW = 0.85
MIN_VOICED_SECONDS = 0.5       # less singing than this in the input: no pitch figure
MIN_SPEECH_SECONDS = 1.0       # less sound than this in a clip: no similarity figure
MAX_EMBED_SECONDS = 90.0       # embed at most this much sound of a clip (cost bound)
EMBED_SR = 16000
HOP_S = 0.01                   # F0 frames every 10 ms (20 ms halves the cost but reads a leaky stem kinder)
REF_CACHE_SIZE = 8             # reference embeddings kept per process (a worker sees the same voices again)
INPUT_VOICING = 0.5            # crepe periodicity above which an input frame is sung
INPUT_GATE_DB = 25.0           # ... and no quieter than this under the loud sung frames
SAMPLE_SECONDS = 60.0          # longer vocals are measured on this much, in windows spread evenly
SAMPLE_WINDOW_S = 5.0          # ... of this length each

_ENCODERS: dict[str, object] = {}
_REF_EMBEDDINGS: "OrderedDict[tuple, np.ndarray | None]" = OrderedDict()
_LOCK = threading.Lock()

Progress = Callable[[float], None]


@dataclass
class QualityReport:
    pitch_accuracy: float | None                 # 0..1, None when not measurable
    speaker_similarity: float | None             # converted vs reference, None when not measurable
    original_similarity: float | None = None     # input vocal vs reference (context)
    quality_warning: bool = False
    octave_shift: int = 0                        # whole octaves the target was moved by
    voiced_seconds: float = 0.0                  # input frames the pitch figure is over
    median_cents_error: float | None = None      # median |error| over those frames
    sampled_seconds: float | None = None         # seconds measured when the vocal was sampled
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# speaker embeddings
# ------------------------------------------------------------------------------------------------
def load_encoder(device: str = "cpu"):
    """Resemblyzer's ``VoiceEncoder`` on ``device``, loaded once per process."""
    key = str(device)
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resemblyzer imports scipy.ndimage.morphology
                from resemblyzer import VoiceEncoder
            enc = VoiceEncoder(device=key, verbose=False).eval()
            _ENCODERS[key] = enc
        return enc


def _sounding(x: np.ndarray, sr: int, floor_db: float = 40.0, win_s: float = 0.03) -> np.ndarray:
    """``x`` with its quiet windows (more than ``floor_db`` under the loudest) left out.

    Energy rather than Resemblyzer's own WebRTC VAD, which is tuned to speech and drops held
    sung notes."""
    win = max(1, int(win_s * sr))
    n = len(x) // win
    if n == 0:
        return x[:0]
    fr = x[: n * win].reshape(n, win)
    db = 10 * np.log10(np.mean(fr.astype(np.float64) ** 2, axis=1) + 1e-20)
    keep = db > max(db.max() - floor_db, -70.0)
    return fr[keep].reshape(-1)


def embed(x: np.ndarray, sr: int, *, device: str = "cpu") -> np.ndarray | None:
    """Resemblyzer speaker embedding of mono ``x``, or ``None`` with too little sound."""
    from .audio import resample

    x = np.nan_to_num(np.asarray(x, dtype=np.float32))
    if x.ndim > 1:
        x = x.mean(axis=0)
    if not len(x) or float(np.max(np.abs(x))) < 1e-4:
        return None
    x16 = resample(x, int(sr), EMBED_SR) if int(sr) != EMBED_SR else x
    x16 = _sounding(x16, EMBED_SR)
    if len(x16) < MIN_SPEECH_SECONDS * EMBED_SR:
        return None
    x16 = x16[: int(MAX_EMBED_SECONDS * EMBED_SR)]
    # Resemblyzer's volume normalisation (-30 dBFS RMS, boost only)
    rms = float(np.sqrt(np.mean(x16.astype(np.float64) ** 2)))
    target = 10 ** (-30 / 20)
    if 0 < rms < target:
        x16 = x16 * np.float32(target / rms)
    enc = load_encoder(device)
    return np.asarray(enc.embed_utterance(x16.astype(np.float32)), dtype=np.float64)


def embed_cached(x: np.ndarray, sr: int, *, device: str = "cpu") -> np.ndarray | None:
    """:func:`embed` remembered by content (for references, which repeat across jobs)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    key = (hashlib.sha1(a.tobytes()).hexdigest(), int(sr), str(device))
    with _LOCK:
        if key in _REF_EMBEDDINGS:
            _REF_EMBEDDINGS.move_to_end(key)
            return _REF_EMBEDDINGS[key]
    e = embed(a, sr, device=device)
    with _LOCK:
        _REF_EMBEDDINGS[key] = e
        while len(_REF_EMBEDDINGS) > REF_CACHE_SIZE:
            _REF_EMBEDDINGS.popitem(last=False)
    return e


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(1e-12, np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------
# pitch
# ------------------------------------------------------------------------------------------------
def _frame_level_db(x: np.ndarray, sr: int, n_frames: int) -> np.ndarray:
    """RMS level (dB) of 40 ms windows centred on the F0 frames."""
    hop = max(1, int(round(HOP_S * sr)))
    win = max(hop, int(0.04 * sr))
    # (a running sum per block of frames: np.convolve over the whole padded signal was a direct
    # O(samples x window) convolution and held three full-length float64 copies)
    x = np.asarray(x)
    power = np.zeros(n_frames)
    step = 4096
    for f0 in range(0, n_frames, step):
        f1 = min(n_frames, f0 + step)
        # frame i's window is samples [i*hop - win//2, i*hop - win//2 + win)
        a = f0 * hop - win // 2
        b = (f1 - 1) * hop - win // 2 + win
        lo, hi = max(0, a), max(0, min(len(x), b))
        seg = np.zeros(b - a)
        if hi > lo:
            seg[lo - a: hi - a] = x[lo:hi]
        cs = np.concatenate([[0.0], np.cumsum(seg * seg)])
        starts = np.arange(f1 - f0) * hop
        power[f0:f1] = (cs[starts + win] - cs[starts]) / win
    return 10 * np.log10(np.maximum(power, 0.0) + 1e-20)


def _melody(x: np.ndarray, sr: int, device: str, progress: Progress | None,
            threshold: float, gate_db: float | None = None) -> np.ndarray:
    """Cleaned F0 track (0 = unvoiced). ``gate_db``: frames quieter than that under the loud
    voiced frames (95th percentile) count as unvoiced."""
    from .engines.pitch import clean_f0, track_f0

    _, f0, per = track_f0(x, sr, device=device, hop_s=HOP_S, progress=progress)
    f = clean_f0(f0, per, threshold=threshold, hop_s=HOP_S)
    if gate_db is not None and (f > 0).any():
        level = _frame_level_db(x, sr, len(f))
        loud = float(np.percentile(level[f > 0], 95))
        f = np.where(level > loud - gate_db, f, 0.0)
    return f


def pitch_accuracy(converted_f0: np.ndarray, input_f0: np.ndarray, pitch_shift: float,
                   octave_shift: int | None = None, *, auto_pitch: bool = False
                   ) -> tuple[float | None, int, float | None, int]:
    """``(accuracy, octave_shift used, median |cents error|, voiced frames)`` from two F0 tracks
    on the same grid (0 = unvoiced).

    ``octave_shift`` None with ``auto_pitch``: the whole-octave offset (-2..2) that fits the
    median of the voiced frames is used, so an auto-pitched vocal is judged against the octave
    it was moved to, not against the input's."""
    n = min(len(converted_f0), len(input_f0))
    fin, fout = np.asarray(input_f0[:n], float), np.asarray(converted_f0[:n], float)
    voiced = fin > 0
    nv = int(voiced.sum())
    if nv == 0:
        return None, int(octave_shift or 0), None, 0
    target = fin[voiced] * 2.0 ** (float(pitch_shift) / 12.0)
    out = fout[voiced]
    both = out > 0
    if octave_shift is None:
        octave_shift = 0
        if auto_pitch and both.any():
            d = float(np.median(np.log2(out[both] / target[both])))
            octave_shift = int(np.clip(np.round(d), -2, 2))
    target = target * 2.0 ** int(octave_shift)
    cents = np.full(nv, np.inf)
    cents[both] = np.abs(1200.0 * np.log2(out[both] / target[both]))
    acc = float(np.mean(cents <= PITCH_TOLERANCE_CENTS))
    med = float(np.median(cents)) if np.isfinite(np.median(cents)) else None
    return acc, int(octave_shift), med, nv


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
def assess(converted_vocal: np.ndarray, input_vocal: np.ndarray, sr: int, reference: np.ndarray,
           ref_sr: int, pitch_shift: float = 0.0, *, device: str | None = None,
           octave_shift: int | None = None, auto_pitch: bool = False,
           progress: Progress | None = None, similarity: bool = True) -> QualityReport:
    """Measure ``converted_vocal`` against ``input_vocal`` (both mono at ``sr``, aligned) and
    ``reference`` (mono at ``ref_sr``). ``progress(fraction)`` may raise to cancel."""
    from .device import default_device

    device = device or default_device()
    notes: list[str] = []

    def prog(a: float, b: float) -> Progress | None:
        if progress is None:
            return None
        return lambda f: progress(a + (b - a) * max(0.0, min(1.0, float(f))))

    conv = np.nan_to_num(np.asarray(converted_vocal, dtype=np.float32))
    inp = np.nan_to_num(np.asarray(input_vocal, dtype=np.float32))
    conv = conv.mean(axis=0) if conv.ndim > 1 else conv
    inp = inp.mean(axis=0) if inp.ndim > 1 else inp
    n = min(len(conv), len(inp))
    conv, inp = conv[:n], inp[:n]
    sampled = None
    if n > (SAMPLE_SECONDS + SAMPLE_WINDOW_S) * sr:
        starts, win = _sample_windows(n, sr)
        conv, inp = _sample(conv, starts, win, sr), _sample(inp, starts, win, sr)
        sampled = round(len(starts) * win / sr, 1)
        n = len(conv)
    conv_silent = not n or float(np.max(np.abs(conv))) < 1e-4
    inp_silent = not n or float(np.max(np.abs(inp))) < 1e-4

    # -- pitch ------------------------------------------------------------------------------
    acc = med = None
    used_oct = int(octave_shift or 0)
    voiced_s = 0.0
    if inp_silent:
        notes.append("pitch accuracy not measured: the input vocal is silent")
    else:
        # A separated stem carries some pitched accompaniment: only confidently voiced frames
        # within INPUT_GATE_DB of the loud singing count as the melody to follow.
        f_in = _melody(inp, sr, device, prog(0.0, 0.35), threshold=INPUT_VOICING, gate_db=INPUT_GATE_DB)
        voiced_s = float((f_in > 0).sum() * HOP_S)
        if voiced_s < MIN_VOICED_SECONDS:
            notes.append(f"pitch accuracy not measured: only {voiced_s:.2f} s of singing in the input vocal")
        elif conv_silent:
            notes.append("pitch accuracy not measured: the converted vocal is silent")
        else:
            # the converted track: every frame with sound counts (threshold 0), so a converter
            # that goes unvoiced where the input sings is charged for it
            # (only around the input's sung frames: the tracker skips silence, so this halves the cost)
            near = np.convolve((f_in > 0).astype(float), np.ones(2 * int(np.ceil(0.04 / HOP_S)) + 1),
                               mode="same") > 0   # +-40 ms
            hop = max(1, int(round(HOP_S * sr)))
            mask = np.repeat(near, hop)[:n]
            mask = np.pad(mask, (0, n - len(mask)))
            f_out = _melody(conv * mask, sr, device, prog(0.35, 0.7), threshold=0.0)
            acc, used_oct, med, _ = pitch_accuracy(f_out, f_in, pitch_shift, octave_shift, auto_pitch=auto_pitch)
    if progress is not None:
        progress(0.7)

    # -- speaker similarity -----------------------------------------------------------------
    sim = orig = None
    if similarity:
        e_ref = embed_cached(reference, ref_sr, device=device)
        if e_ref is None:
            notes.append("speaker similarity not measured: too little sound in the reference")
        else:
            if progress is not None:
                progress(0.8)
            e_conv = None if conv_silent else embed(conv, sr, device=device)
            if e_conv is None:
                notes.append("speaker similarity not measured: too little sound in the converted vocal")
            else:
                sim = round(cosine(e_conv, e_ref), 4)
            if progress is not None:
                progress(0.9)
            e_in = None if inp_silent else embed(inp, sr, device=device)
            if e_in is not None:
                orig = round(cosine(e_in, e_ref), 4)
    if progress is not None:
        progress(1.0)

    warn = acc is not None and acc < PITCH_WARNING_BELOW
    if warn:
        notes.append(f"pitch accuracy {acc:.0%} is under {PITCH_WARNING_BELOW:.0%}: the converted vocal "
                     "strays from the melody")
    return QualityReport(pitch_accuracy=None if acc is None else round(acc, 4), speaker_similarity=sim,
                         original_similarity=orig, quality_warning=bool(warn), octave_shift=used_oct,
                         voiced_seconds=round(voiced_s, 2),
                         median_cents_error=None if med is None else round(med, 1),
                         sampled_seconds=sampled, notes=notes)


def _sample_windows(n: int, sr: int) -> tuple[np.ndarray, int]:
    """Starts and length (samples) of the windows that sample an ``n``-sample vocal: about
    SAMPLE_SECONDS in windows of SAMPLE_WINDOW_S spread evenly over it. Two crepe passes and two
    embeddings over a whole 3-minute vocal cost about as much as the conversion itself; a minute
    spread over the song estimates the same figures."""
    win = int(SAMPLE_WINDOW_S * sr)
    k = max(1, int(round(SAMPLE_SECONDS / SAMPLE_WINDOW_S)))
    return np.linspace(0, n - win, k).astype(int), win


def _sample(x: np.ndarray, starts: np.ndarray, win: int, sr: int) -> np.ndarray:
    """The windows of ``x`` joined with 0.1 s of silence (the tracker skips silent frames, so no
    pitch is read across a join)."""
    gap = np.zeros(int(0.1 * sr), dtype=x.dtype)
    parts = []
    for s0 in starts:
        parts += [x[s0:s0 + win], gap]
    return np.concatenate(parts[:-1])
