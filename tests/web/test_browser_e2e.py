"""The cover page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright's
Python package) against a real daphne server and a real RQ worker on channels-redis: log in, upload
two generated files, follow the job over the WebSocket to 100%, see the players, download the
cover and decode it; and a run canceled midway. Screenshots go to test-artifacts/.

Skipped (with the reason) only when /usr/bin/chromium is missing."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
import redis as redis_lib
import soundfile as sf

from tests import signals
from tests.processes import ROOT, Stack, e2e_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
STAGES = ["preprocess", "separate", "infer", "mix", "finalize"]
USERNAME, PASSWORD = "singer", "a-long-test-password-1"

pytestmark = [
    pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing (apt-get install chromium; scripts/test.sh does)"),
]


@pytest.fixture(scope="module")
def stack(e2e_database, django_db_blocker, tmp_path_factory):
    from django.conf import settings

    tmp = tmp_path_factory.mktemp("browser-e2e")
    redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()
    with django_db_blocker.unblock():
        from django.contrib.auth import get_user_model

        from covers.models import APIKey
        # a normal (not staff) user who owns a key: the page works through the session
        user = get_user_model().objects.create_user(USERNAME, password=PASSWORD)
        APIKey.objects.create_key(name="singer's key", owner=user)
    s = Stack(tmp, e2e_env(tmp))
    try:
        s.start()
        yield s
    finally:
        s.stop()
        with django_db_blocker.unblock():
            from django.contrib.auth import get_user_model

            from covers.models import APIKey, CoverJob
            CoverJob.objects.all().delete()
            APIKey.objects.all().delete()
            get_user_model().objects.filter(username=USERNAME).delete()
        redis_lib.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser-audio")
    mix, *_ = signals.song(seconds=4.0)
    long_mix, *_ = signals.song(seconds=30.0)
    return {"song": signals.write(d / "song.wav", mix), "long": signals.write(d / "long-song.wav", long_mix),
            "ref": signals.write(d / "reference.wav", signals.reference_voice())}


@pytest.fixture
def browser(stack):
    # Per test, after the stack and the database fixtures: Playwright's sync API runs an event loop
    # on this thread while it is started, and Django refuses database calls from such a thread.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, stack, request):
    context = browser.new_context(viewport={"width": 900, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
        print("\n".join(console))
        print(stack.logs())
    context.close()
    assert not [c for c in console if c.startswith("pageerror")], console


def log_in(page, stack) -> None:
    page.goto(stack.base + "/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#cover-form")
    assert page.url.rstrip("/") == stack.base


def drop_file(page, field: str, path: Path) -> None:
    """Drag and drop a file onto a drop zone (a DataTransfer built in the page)."""
    import base64

    page.evaluate("""([field, name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "audio/wav"}));
        const zone = document.querySelector(`.drop[data-field=${field}]`);
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }
    }""", [field, path.name, base64.b64encode(path.read_bytes()).decode()])


def submit(page, song: Path, ref: Path, pitch: int = 0, drop_reference: bool = False) -> str:
    page.set_input_files("#song", str(song))
    if drop_reference:
        drop_file(page, "reference_voice", ref)
        assert page.inner_text(".drop[data-field=reference_voice] .drop-file").startswith(ref.name)
    else:
        page.set_input_files("#reference_voice", str(ref))
    page.eval_on_selector("#pitch_shift", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                          str(pitch))
    page.click("#submit")
    page.wait_for_selector("#job:not([hidden])", timeout=30_000)
    return page.get_attribute("#job", "data-job-id")


def ws_events(page, job_id: str) -> list[dict]:
    return page.evaluate("id => window.coverEvents.filter(e => e.job_id === id)", job_id)


def test_make_a_cover_and_watch_it_live(page, stack, audio):
    log_in(page, stack)
    job_id = submit(page, audio["song"], audio["ref"], pitch=2)
    assert page.inner_text("#pitch-value") == "+2"
    page.wait_for_selector("#job[data-status=succeeded]", timeout=240_000)

    # progress reached 100% through the WebSocket, with the stages in order
    events = ws_events(page, job_id)
    assert events and events[-1]["status"] == "succeeded" and events[-1]["progress"] == 100, events
    stages = [e["stage"] for e in events if e["status"] == "running"]
    seen = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert seen == STAGES[STAGES.index(seen[0]):], seen  # a late first snapshot may skip early stages
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    assert page.inner_text("#job-percent") == "100%"
    assert page.get_attribute("#steps li[data-stage=finalize]", "class") == "done"
    assert page.is_hidden("#cancel") and page.is_hidden("#job-error")

    # players and waveforms for the cover and the three stems, decoded by the browser
    page.wait_for_function("document.querySelectorAll('figure.track[data-decoded]').length === 4",
                           timeout=30_000)
    tracks = page.eval_on_selector_all("figure.track", "els => els.map(f => [f.dataset.track, "
                                       "f.dataset.decoded, +f.dataset.duration, "
                                       "f.querySelector('audio').src.startsWith('blob:')])")
    assert [t[0] for t in tracks] == ["result", "vocals", "instrumental", "converted_vocals"]
    for name, decoded, duration, blob in tracks:
        assert decoded == "1" and blob and abs(duration - 4.0) < 0.05, (name, duration)
    drawn = page.evaluate("""() => {
        const c = document.querySelector('figure.track[data-track=result] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return n / (c.width * c.height); }""")
    assert 0.05 < drawn < 0.95, drawn  # a waveform, not an empty or filled box

    # the recent jobs list got it live
    page.wait_for_selector(f"#jobs li[data-job-id='{job_id}'][data-status=succeeded]", timeout=10_000)

    # download the cover through the link and decode it
    with page.expect_download() as info:
        page.click("figure.track[data-track=result] a.download")
    data = Path(info.value.path()).read_bytes()
    decoded, sr = sf.read(io.BytesIO(data), always_2d=True)
    assert sf.info(io.BytesIO(data)).format == "WAV"
    assert abs(len(decoded) / sr - 4.0) < 0.01

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "cover-page-finished.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.wait_for_timeout(300)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"horizontal scroll at phone width ({width}px)"
    page.screenshot(path=str(ARTIFACTS / "cover-page-phone.png"), full_page=True)


def test_cancel_a_running_cover(page, stack, audio):
    log_in(page, stack)
    job_id = submit(page, audio["long"], audio["ref"], drop_reference=True)
    # midway: past preprocessing (the current step highlighted comes from the WebSocket)
    page.wait_for_selector("#steps li.current:not([data-stage=preprocess])", timeout=120_000)
    t0 = time.monotonic()
    page.click("#cancel")
    page.wait_for_selector("#job[data-status=canceled]", timeout=15_000)
    assert time.monotonic() - t0 < 10
    assert page.inner_text("#job-error") == "Canceled."
    assert page.is_hidden("#results") and page.is_hidden("#cancel")
    assert page.locator("#steps li.stopped").count() == 1
    page.wait_for_selector(f"#jobs li[data-job-id='{job_id}'][data-status=canceled]", timeout=10_000)
    events = ws_events(page, job_id)
    assert any(e["status"] == "running" for e in events) and events[-1]["status"] == "canceled", events
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "cover-page-canceled.png"), full_page=True)
