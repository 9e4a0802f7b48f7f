"""Issue 13, risk "loose number parsing": every numeric form field of the create API (pitch shift,
gains, reverb, sample rate, the RVC numbers) and the ``Prefer: wait`` header take plain ASCII
decimal numbers only. Python's float()/int() take ``1_0``, Arabic-Indic and other Unicode digits,
padded strings, nan, inf and exponents: each is a 400 JSON naming the field."""
from __future__ import annotations

import pytest

from covers.apis import CoverJobCreateApi, parse_prefer_wait
from covers.errors import InvalidParameter
from covers.models import CoverJob
from tests.service.conftest import ref_bytes, song_bytes, upload  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/v1/cover/jobs"

# (field, valid values (as sent) -> parsed, one out-of-range value)
DECIMAL_FIELDS = {
    "pitch_shift": ({"1": 1.0, "-2": -2.0, "+3": 3.0, "1.5": 1.5, "-0.5": -0.5, ".5": 0.5, "5.": 5.0, "24": 24.0,
                     "-24": -24.0, "0": 0.0, "007": 7.0}, "25"),
    "vocal_gain_db": ({"-3.5": -3.5, "6": 6.0, "0.25": 0.25}, "-24.5"),
    "instrumental_gain_db": ({"2": 2.0, "-6.0": -6.0}, "30"),
    "reverb": ({"0.3": 0.3, "1": 1.0, "0": 0.0, ".25": 0.25}, "1.5"),
    "index_rate": ({"0.75": 0.75, "1": 1.0}, "2"),
    "protect": ({"0.33": 0.33, "0.5": 0.5}, "0.6"),
    "rms_mix_rate": ({"0.25": 0.25, "0": 0.0}, "-1"),
}
INTEGER_FIELDS = {
    "output_sample_rate": ({"44100": 44100, "+48000": 48000, "8000": 8000}, "7999"),
    "filter_radius": ({"3": 3, "0": 0, "7": 7}, "8"),
}
# what float()/int() accept and a client does not mean (or Python refuses anyway)
NOT_PLAIN = ["1_0", "\u0661\u0660",            # Arabic-Indic "10"
             "\u06f1\u06f0",                   # Extended Arabic-Indic "10"
             "\u0967\u0966",                   # Devanagari "10"
             "\uff11\uff10",                   # fullwidth "10"
             " 5", "5 ", "\t5", "5\n", "\u00a05", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "0x10", "0X1A",
             "1e1", "1E-1", "+", "-", ".", "--1", "+-1", "1.2.3", "1,5", "\u00bd", "\u00b2", "5\x00", "12" * 20]
NOT_WHOLE = NOT_PLAIN + ["44100.0", "4.41e4", "44_100", "0xAC44", "\u0664\u0664\u0661\u0660\u0660", " 44100"]


def _codes(field: str, value) -> list[str]:
    """The field's own validation of ``value`` (as the serializer runs it): [] when accepted."""
    from rest_framework.exceptions import ValidationError

    try:
        CoverJobCreateApi.InputSerializer().fields[field].run_validation(value)
    except ValidationError as exc:
        return [d.code for d in exc.detail]
    return []


def _parsed(field: str, value):
    return CoverJobCreateApi.InputSerializer().fields[field].run_validation(value)


def _post(client, raw, song, ref, **fields):
    return client.post(JOBS, {"song": upload("s.wav", song), "reference_voice": upload("r.wav", ref), **fields},
                       HTTP_X_API_KEY=raw)


@pytest.mark.parametrize("field", list(DECIMAL_FIELDS) + list(INTEGER_FIELDS))
def test_each_numeric_field_takes_plain_ascii_numbers_only(field):
    valid, out_of_range = {**DECIMAL_FIELDS, **INTEGER_FIELDS}[field]
    bad = NOT_WHOLE if field in INTEGER_FIELDS else NOT_PLAIN
    for value, parsed in valid.items():
        got = _parsed(field, value)
        assert got == parsed and type(got) is type(parsed), (field, value, got)
    for value in bad:
        assert _codes(field, value) == ["invalid"], (field, repr(value), _codes(field, value))
    assert _codes(field, out_of_range) and _codes(field, out_of_range) != ["invalid"]


@pytest.mark.parametrize("field", list(DECIMAL_FIELDS) + list(INTEGER_FIELDS))
def test_a_loose_number_is_a_400_naming_the_field(client, api_key, song_bytes, ref_bytes, field, outcome):
    bad = NOT_WHOLE if field in INTEGER_FIELDS else NOT_PLAIN
    sample = bad if field == "pitch_shift" else ["1_0", "\u0661\u0660", " 5", "nan", "inf", "0x10", "1e1"]
    answers = []
    for value in sample:
        resp = _post(client, api_key[1], song_bytes, ref_bytes, **{field: value})
        body = resp.json()
        answers.append((value, resp.status_code, body.get("error", {}).get("field")))
        assert resp.status_code == 400 and set(body) == {"error"}, (field, repr(value), body)
        assert body["error"]["field"] == field and body["error"]["code"], (field, repr(value), body)
    assert CoverJob.objects.count() == 0
    outcome(f"{field} sent as {len(sample)} loose numbers (1_0, Arabic-Indic digits, padded, nan, inf, hex, 1e1...)",
            expected=f"400 JSON naming {field}, no job",
            measured=f"{sorted({a[1] for a in answers})} naming {sorted({str(a[2]) for a in answers})} for "
                     f"{len(answers)} values; 0 jobs")
    # a plain number still makes a job
    value = next(iter({**DECIMAL_FIELDS, **INTEGER_FIELDS}[field][0]))
    resp = _post(client, api_key[1], song_bytes, ref_bytes, **{field: value})
    assert resp.status_code == 201, resp.content


@pytest.mark.parametrize("header,expected", [("wait=3", 3), ("wait=0", 0), ("wait=\"5\"", 5), ("wait=60", 60)])
def test_prefer_wait_takes_plain_whole_seconds(header, expected):
    assert parse_prefer_wait(header) == expected


@pytest.mark.parametrize("header", ["wait=\u0663", "wait=\u0968", "wait=\uff13", "wait=1_0", "wait=3.0", "wait=-1",
                                    "wait=0x3", "wait=61", "wait=\u00b2", "wait="])
def test_prefer_wait_refuses_other_digits(header):
    with pytest.raises(InvalidParameter) as info:
        parse_prefer_wait(header)
    assert info.value.field == "Prefer"


@pytest.mark.parametrize("port", ["\u0668\u0660", "8_0", "+80", "0x50", "80.0", "\uff18\uff10"])
def test_a_webhook_port_in_other_digits_is_a_400_naming_webhook_url(client, api_key, song_bytes, ref_bytes, port):
    resp = _post(client, api_key[1], song_bytes, ref_bytes, webhook_url=f"http://127.0.0.1:{port}/hook")
    body = resp.json()
    assert resp.status_code == 400 and body["error"]["field"] == "webhook_url", body
    assert CoverJob.objects.count() == 0
