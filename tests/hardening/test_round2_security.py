"""Hardening round 2 (issue 13): webhook address checks (DNS rebinding, IPv6 forms carrying a
private IPv4 address, CR/LF, ports), webhook signatures checked by an independent implementation
(the ``standardwebhooks`` package and the Standard Webhooks published test vector), login
throttling (django-axes), and the test run's own network guard.

Every webhook test here is either pure validation under a resolver stub (no traffic) or a delivery
to a local receiver on 127.0.0.1."""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time

import pytest

from covers import webhooks
from covers.models import CoverJob, WebhookDelivery
from tests import netguard

pytestmark = pytest.mark.django_db(transaction=False)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


# --------------------------------------------------------------------------------------------
# a resolver stub and a local receiver
# --------------------------------------------------------------------------------------------
class Resolver:
    """Stands in for socket.getaddrinfo: ``answers[name]`` is a list of answers (each a list of
    addresses) given in turn (the last one repeats); numeric hosts resolve as themselves; any
    other name does not resolve. No DNS traffic."""

    def __init__(self, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        host = host.decode() if isinstance(host, bytes) else host
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
            return netguard._originals["getaddrinfo"](host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except ValueError:
            pass
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        seq = self.answers[host]
        addrs = seq[min(len([c for c in self.calls if c == host]) - 1, len(seq) - 1)]
        out = []
        for a in addrs:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            sockaddr = (a, port, 0, 0) if fam == socket.AF_INET6 else (a, port)
            out.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out


@pytest.fixture
def resolver(monkeypatch):
    r = Resolver({"public.test": [[PUBLIC_V4]], "public6.test": [[PUBLIC_V6]],
                  "six2four.test": [["2002:7f00:1::1"]], "nat64.test": [["64:ff9b::a9fe:a9fe"]],
                  "mixed.test": [[PUBLIC_V4, "2002:a00:1::1"]], "loopback.test": [["127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", r)
    return r


class Receiver:
    """A local HTTP(S) server on 127.0.0.1 recording each POST (headers, body) and the TLS SNI."""

    def __init__(self, tls_context: ssl.SSLContext | None = None):
        self.got: list[tuple[dict, bytes]] = []
        self.sni: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls_context is not None:
            tls_context.sni_callback = lambda sock, name, ctx: outer.sni.append(name)
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _job(api_key, url: str) -> CoverJob:
    key, _ = api_key
    return CoverJob.objects.create(owner=key, status="running", attempt=1, webhook_url=url)


def _refused(url: str) -> str | None:
    """The refusal message for ``url``, or None when it is accepted."""
    try:
        webhooks.webhook_check_url(url)
    except webhooks.InvalidParameter as exc:
        assert exc.field == "webhook_url"
        return exc.message
    return None


# --------------------------------------------------------------------------------------------
# pure validation (resolver stub, no traffic)
# --------------------------------------------------------------------------------------------
ACCEPTED = [
    "http://public.test/hook",
    "https://public.test/hook?a=1&b=%20x",  # an encoded space in the query is data, not a control char
    "https://public.test:443/",
    "http://public.test:80/x",
    "https://public6.test/",
    f"http://{PUBLIC_V4}/hook",
    f"https://[{PUBLIC_V6}]/hook",
]
REFUSED = [
    # (b) IPv6 forms carrying a private/loopback IPv4 address
    ("http://[2002:7f00:1::1]/", "6to4 of 127.0.0.1"),
    ("http://[2002:a00:1::]/", "6to4 of 10.0.0.1"),
    ("http://[2002:c0a8:101::]/", "6to4 of 192.168.1.1"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 of the metadata address 169.254.169.254"),
    ("http://six2four.test/", "a name resolving to 6to4 of 127.0.0.1"),
    ("http://[64:ff9b::7f00:1]/", "NAT64 of 127.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 of 169.254.169.254"),
    ("http://nat64.test/", "a name resolving to NAT64 of 169.254.169.254"),
    ("http://[64:ff9b:1::a00:1]/", "local-use NAT64 (RFC 8215)"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "Teredo (client 127.0.0.1)"),
    ("http://[2001:0:a00:1::1]/", "Teredo (server 10.0.0.1)"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped 127.0.0.1"),
    ("http://[::ffff:a00:1]/", "IPv4-mapped 10.0.0.1"),
    ("http://[::127.0.0.1]/", "IPv4-compatible 127.0.0.1"),
    ("http://[::a00:1]/", "IPv4-compatible 10.0.0.1"),
    ("http://mixed.test/", "one public and one 6to4-of-private answer"),
    ("http://loopback.test/", "a name resolving to 127.0.0.1"),
    # (c) CR/LF and other control characters, raw or percent-encoded
    ("http://public.test/a\r\nX-Injected: 1", "raw CR/LF"),
    ("http://public.test/hook\n", "a trailing LF"),
    ("http://public.test/a%0d%0aX-Injected:%201", "encoded CR/LF"),
    ("http://public.test/a%0D%0A", "encoded CR/LF, upper case"),
    ("http://public.test/%0a", "encoded LF"),
    ("http://public.test/a%00b", "encoded NUL"),
    ("http://public.test/a\tb", "raw tab"),
    ("http://public.test/a b", "raw space"),
    ("http://public.test/a\x7f", "raw DEL"),
    ("http://public.test/%E2%80%A8", "encoded U+2028 line separator"),
    ("http://public.test/\u2028", "raw U+2028"),
    ("http://pub\u200blic.test/", "a zero-width space in the host"),
    ("http://public.test%0d%0a/", "encoded CR/LF in the host"),
    # (d) ports other than 80/443 without the setting
    ("http://public.test:8080/", "port 8080"),
    ("https://public.test:22/", "port 22"),
    ("http://public.test:6379/", "port 6379 (Redis)"),
    ("http://public.test:0/", "port 0"),
    (f"http://{PUBLIC_V4}:25/", "port 25 on an address"),
    # already refused before this round (kept in the table)
    ("ftp://public.test/", "not http(s)"),
    ("http://user:pw@public.test/", "credentials"),
    ("http://unknown.test/", "does not resolve"),
]


@pytest.fixture
def strict(settings, resolver):
    settings.COVER_WEBHOOK_ALLOW_PRIVATE = False
    settings.COVER_WEBHOOK_ALLOWED_PORTS = ["80", "443"]
    return settings


def test_webhook_url_table(strict, outcome):
    accepted_wrongly = [url for url, why in REFUSED if _refused(url) is None]
    refused_wrongly = {url: _refused(url) for url in ACCEPTED if _refused(url) is not None}
    outcome("webhook URL table: IPv6 forms of private IPv4 (6to4, NAT64, Teredo, mapped, compatible), "
            "CR/LF raw or encoded, ports other than 80/443",
            expected=f"{len(REFUSED)} refused (400 webhook_url), {len(ACCEPTED)} public URLs accepted",
            measured=f"{len(REFUSED) - len(accepted_wrongly)} refused, {len(ACCEPTED) - len(refused_wrongly)} accepted")
    assert not accepted_wrongly, accepted_wrongly
    assert not refused_wrongly, refused_wrongly


def test_port_and_control_checks_hold_with_private_addresses_allowed(settings, resolver):
    settings.COVER_WEBHOOK_ALLOW_PRIVATE = True
    settings.COVER_WEBHOOK_ALLOWED_PORTS = ["80", "443"]
    assert "port 8000" in _refused("http://127.0.0.1:8000/hook")
    assert "control characters" in _refused("http://127.0.0.1/hook%0d%0aX: 1")
    assert _refused("http://127.0.0.1/hook") is None
    settings.COVER_WEBHOOK_ALLOWED_PORTS = ["8000"]
    assert _refused("http://127.0.0.1:8000/hook") is None
    assert "port 80 " in _refused("http://127.0.0.1/hook")
    settings.COVER_WEBHOOK_ALLOWED_PORTS = ["*"]
    assert _refused("http://127.0.0.1:8000/hook") is None


def test_refused_at_create_with_a_json_400(client, api_key, strict):
    from django.core.files.uploadedfile import SimpleUploadedFile

    _, raw = api_key
    for url in ("http://public.test/a%0d%0aX:%201", "http://[2002:7f00:1::1]/", "http://public.test:8080/"):
        resp = client.post("/api/v1/cover/jobs", {
            "song": SimpleUploadedFile("s.wav", b"RIFF"), "reference_voice": SimpleUploadedFile("r.wav", b"RIFF"),
            "webhook_url": url}, HTTP_X_API_KEY=raw)
        assert resp.status_code == 400, resp.content
        assert resp.json()["error"]["field"] == "webhook_url", resp.content
    assert not CoverJob.objects.exists()


# --------------------------------------------------------------------------------------------
# (a) DNS rebinding: one lookup, the checked address is the one connected to
# --------------------------------------------------------------------------------------------
def test_dns_rebinding_never_reaches_the_second_answer(api_key, receiver, strict, resolver, monkeypatch, outcome):
    """The stub answers a public address first and 127.0.0.1 (where a receiver listens) after.
    Today's code checked the first answer and let requests look the name up again; now the
    delivery connects to the address it checked (recorded below, refused without traffic) and
    the receiver on 127.0.0.1 hears nothing."""
    import urllib3.util.connection as u3conn

    strict.COVER_WEBHOOK_ALLOWED_PORTS = [str(receiver.port)]
    resolver.answers["rebind.test"] = [[PUBLIC_V4], ["127.0.0.1"]]
    url = f"http://rebind.test:{receiver.port}/hook"
    job = _job(api_key, url)
    connected_to = []
    original = u3conn.create_connection

    def recording_create_connection(address, *args, **kwargs):
        connected_to.append(address)
        host = address[0]
        try:
            if not ipaddress.ip_address(host.strip("[]")).is_loopback:
                raise ConnectionRefusedError(f"test: not connecting to {host}")  # no traffic outside
        except ValueError:
            pass  # a name: looked up (again) by urllib3 itself
        return original(address, *args, **kwargs)

    monkeypatch.setattr(u3conn, "create_connection", recording_create_connection)
    status = webhooks.webhook_attempt(str(job.id), "start", "msg_rebind", "{}", 1, time.time())
    time.sleep(0.2)
    row = WebhookDelivery.objects.get(job=job)
    outcome("webhook DNS rebinding (public answer at the check, 127.0.0.1 after)",
            expected="connects only to the checked public address; the 127.0.0.1 receiver gets nothing",
            measured=f"lookups {resolver.calls.count('rebind.test')}, connected to {connected_to}, "
                     f"receiver got {len(receiver.got)}")
    assert receiver.got == [], "the second DNS answer (127.0.0.1) was connected to"
    assert connected_to == [(PUBLIC_V4, receiver.port)]
    assert resolver.calls.count("rebind.test") == 1
    assert status is None and not row.delivered and "ConnectionError" in row.error


def test_delivery_keeps_host_header_and_path(api_key, receiver, settings, resolver):
    settings.COVER_WEBHOOK_ALLOW_PRIVATE = True
    settings.COVER_WEBHOOK_ALLOWED_PORTS = [str(receiver.port)]
    resolver.answers["hooks.local.test"] = [["127.0.0.1"]]
    job = _job(api_key, f"http://hooks.local.test:{receiver.port}/in/hook?k=v")
    assert webhooks.webhook_attempt(str(job.id), "start", "msg_h", '{"a":1}', 1, time.time()) == 200
    headers, body = receiver.got[0]
    assert headers["Host"] == f"hooks.local.test:{receiver.port}" and body == b'{"a":1}'
    assert resolver.calls == ["hooks.local.test"]  # one lookup, at the delivery


def _tls_files(tmp_path, name: str):
    """A CA and a server certificate for ``name`` signed by it (EC P-256); paths of CA, cert, key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_https_to_the_pinned_address_checks_sni_and_certificate_for_the_hostname(
        api_key, settings, resolver, tmp_path, monkeypatch):
    ca, cert, key = _tls_files(tmp_path, "hooks.tls.test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    rx = Receiver(tls_context=ctx)
    try:
        settings.COVER_WEBHOOK_ALLOW_PRIVATE = True
        settings.COVER_WEBHOOK_ALLOWED_PORTS = [str(rx.port)]
        resolver.answers["hooks.tls.test"] = [["127.0.0.1"]]
        resolver.answers["other.tls.test"] = [["127.0.0.1"]]
        monkeypatch.setattr(webhooks, "TLS_VERIFY", str(ca))
        job = _job(api_key, f"https://hooks.tls.test:{rx.port}/hook")
        assert webhooks.webhook_attempt(str(job.id), "start", "msg_tls", "{}", 1, time.time()) == 200
        assert rx.sni == ["hooks.tls.test"] and rx.got[0][0]["Host"] == f"hooks.tls.test:{rx.port}"
        # the same address under a name the certificate does not carry: refused by the TLS check
        job2 = _job(api_key, f"https://other.tls.test:{rx.port}/hook")
        assert webhooks.webhook_attempt(str(job2.id), "start", "msg_tls2", "{}", 1, time.time()) is None
        row = WebhookDelivery.objects.get(job=job2)
        assert "SSLError" in row.error and len(rx.got) == 1, row.error
    finally:
        rx.close()


# --------------------------------------------------------------------------------------------
# signatures checked by an independent implementation
# --------------------------------------------------------------------------------------------
def test_standardwebhooks_library_verifies_what_we_send(api_key, receiver, settings, outcome):
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    settings.COVER_WEBHOOK_ALLOW_PRIVATE = True
    settings.COVER_WEBHOOK_ALLOWED_PORTS = [str(receiver.port)]
    key, _ = api_key
    job = _job(api_key, f"http://127.0.0.1:{receiver.port}/hook")
    body = json.dumps({"job_id": str(job.id), "status": "running", "note": "ünï"}, separators=(",", ":"))
    assert webhooks.webhook_attempt(str(job.id), "start", "msg_std", body, 1, time.time()) == 200
    headers, raw = receiver.got[0]
    assert {"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"} <= set(headers)
    # our secret is already the standard's format (whsec_ + base64): given to the library as is
    assert key.webhook_secret.startswith("whsec_") and len(base64.b64decode(key.webhook_secret[6:])) == 32
    verified = Webhook(key.webhook_secret).verify(raw, headers)
    assert verified["job_id"] == str(job.id)
    for bad_body, bad_secret in ((raw + b" ", key.webhook_secret),
                                 (raw, "whsec_" + base64.b64encode(b"x" * 32).decode())):
        with pytest.raises(WebhookVerificationError):
            Webhook(bad_secret).verify(bad_body, headers)
    outcome("webhook signature checked by the standardwebhooks library",
            expected="verifies; a changed body or another secret fails", measured="verifies; both fail")


def test_standard_webhooks_published_test_vector():
    """The specification's example (secret, id, timestamp, body) -> its published signature, by our
    signer, by the library and by hand (HMAC-SHA256 over "id.timestamp.body" with the decoded key)."""
    from standardwebhooks.webhooks import Webhook

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    by_hand = "v1," + base64.b64encode(hmac.new(base64.b64decode(secret[6:]), f"{msg_id}.{ts}.".encode() + body,
                                                hashlib.sha256).digest()).decode()
    assert by_hand == expected
    assert webhooks.sign(secret, msg_id, ts, body) == expected
    lib = Webhook(secret).sign(msg_id, datetime.datetime.fromtimestamp(ts, datetime.timezone.utc), body.decode())
    assert lib == expected


# --------------------------------------------------------------------------------------------
# the network guard itself
# --------------------------------------------------------------------------------------------
def test_network_guard_refuses_outside_addresses_without_sending():
    assert netguard.installed()
    with netguard.blocked_attempts() as tried:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(netguard.NetworkGuardError):
            s.connect(("192.0.2.1", 80))  # TEST-NET-1: refused before any packet
        assert s.connect_ex(("198.51.100.1", 443)) != 0
        s.close()
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("example.com", 80)
        with pytest.raises(OSError):
            socket.create_connection(("203.0.113.9", 80), timeout=1)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(netguard.NetworkGuardError):
            u.sendto(b"x", ("192.0.2.2", 53))
        u.close()
    assert ("192.0.2.1", 80) in tried and ("198.51.100.1", 443) in tried and "example.com" in tried
    assert ("203.0.113.9", 80) in tried and ("192.0.2.2", 53) in tried
    # loopback and unix sockets pass
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=2)
    c.close()
    srv.close()
    a, b = socket.socketpair()
    a.close()
    b.close()
    assert socket.getaddrinfo("localhost", 80)


# --------------------------------------------------------------------------------------------
# login throttling (django-axes): by username and by address, the page's login and the admin's
# --------------------------------------------------------------------------------------------
PASSWORD = "pw-123456789"
LOGINS = {"page": "/accounts/login/", "admin": "/admin/login/"}


def _login(client, path, username, password, ip):
    return client.post(path, {"username": username, "password": password, "next": "/"}, REMOTE_ADDR=ip)


@pytest.mark.parametrize("where", ["page", "admin"])
def test_logins_locked_by_username_from_many_addresses(client, django_user_model, settings, where, outcome):
    django_user_model.objects.create_user("ana", password=PASSWORD, is_staff=True)
    codes = [_login(client, LOGINS[where], "ana", f"wrong-{i}", f"10.0.1.{i + 1}").status_code for i in range(15)]
    right = _login(client, LOGINS[where], "ana", PASSWORD, "10.0.2.1")  # right password, fresh address
    outcome(f"15 wrong passwords for one user from 15 addresses ({where} login), then the right one",
            expected="4 answered 200, the 5th failure and later 429; the right password refused (429) while locked",
            measured=f"codes {sorted(set(codes))}, first 429 at #{codes.index(429) + 1 if 429 in codes else None}, "
                     f"right password -> {right.status_code}")
    assert codes[:settings.AXES_FAILURE_LIMIT - 1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)
    assert codes[settings.AXES_FAILURE_LIMIT - 1] == 429  # the 5th failure locks
    assert codes[settings.AXES_FAILURE_LIMIT:] == [429] * (15 - settings.AXES_FAILURE_LIMIT), codes
    assert right.status_code == 429 and "_auth_user_id" not in client.session
    assert b"Too many failed logins" in right.content and int(right["Retry-After"]) == 15 * 60
    assert client.get("/").status_code == 302  # not logged in
    # another user from one of those addresses is not locked (that address failed once)
    django_user_model.objects.create_user("bo", password=PASSWORD, is_staff=True)
    assert _login(client, LOGINS[where], "bo", PASSWORD, "10.0.1.3").status_code == 302


@pytest.mark.parametrize("where", ["page", "admin"])
def test_logins_locked_by_address_across_usernames(client, django_user_model, settings, where):
    django_user_model.objects.create_user("cy", password=PASSWORD, is_staff=True)
    codes = [_login(client, LOGINS[where], f"guess{i}", "wrong", "10.0.3.7").status_code for i in range(15)]
    assert codes[settings.AXES_FAILURE_LIMIT:] == [429] * (15 - settings.AXES_FAILURE_LIMIT), codes
    assert _login(client, LOGINS[where], "cy", PASSWORD, "10.0.3.7").status_code == 429  # right password, locked address
    assert _login(client, LOGINS[where], "cy", PASSWORD, "10.0.3.8").status_code == 302  # same user elsewhere


def test_lockout_answers_json_to_json_clients_and_ends_after_the_cool_off(client, django_user_model):
    from axes.models import AccessAttempt
    from django.utils import timezone

    django_user_model.objects.create_user("di", password=PASSWORD, is_staff=True)
    for _ in range(6):
        _login(client, LOGINS["page"], "di", "wrong", "10.0.4.1")
    resp = client.post(LOGINS["page"], {"username": "di", "password": PASSWORD}, REMOTE_ADDR="10.0.4.1",
                       HTTP_ACCEPT="application/json")
    assert resp.status_code == 429 and resp["Content-Type"].startswith("application/json")
    assert resp.json()["error"]["code"] == "login_locked"
    # 16 minutes later (the attempts aged by hand) the right password works again
    AccessAttempt.objects.update(attempt_time=timezone.now() - datetime.timedelta(minutes=16))
    assert _login(client, LOGINS["page"], "di", PASSWORD, "10.0.4.1").status_code == 302


def test_lockout_through_the_async_handler(django_user_model, settings):
    """daphne runs the middleware chain async; axes' async path calls the lockout callable with its
    arguments in another order: still a 429 page."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    django_user_model.objects.create_user("ed", password=PASSWORD, is_staff=True)
    client = AsyncClient()

    async def run():
        out = []
        for i in range(7):
            resp = await client.post(LOGINS["page"], {"username": "ed", "password": "wrong" if i < 6 else PASSWORD},
                                     REMOTE_ADDR="10.0.5.1")
            out.append((resp.status_code, resp.content))
        return out

    answers = async_to_sync(run)()
    assert [c for c, _ in answers[:4]] == [200] * 4 and answers[4][0] == 429  # the 5th failure locks
    assert answers[-1][0] == 429 and b"Too many failed logins" in answers[-1][1]


# --------------------------------------------------------------------------------------------
# CI: no silent skips (COVER_CI_STRICT=1 from .ci/run), and the packages the skipping tests need
# --------------------------------------------------------------------------------------------
def test_ci_strict_mode_turns_skips_into_failures_naming_what_is_missing(tmp_path):
    import os
    import subprocess
    import sys

    from tests.processes import ROOT

    probe = tmp_path / "test_probe.py"
    probe.write_text("import pytest\n\n"
                     "def test_needs_strace():\n    pytest.skip('strace is not installed')\n\n"
                     "@pytest.mark.may_skip\ndef test_optional():\n    pytest.skip('optional')\n\n"
                     "def test_plain():\n    assert True\n")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coverproject.settings.test", "COVER_CI_STRICT": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", str(probe)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed, 1 skipped" in run.stdout, run.stdout
    assert "COVER_CI_STRICT=1: skipped, which CI does not allow: Skipped: strace is not installed" in run.stdout
    assert 'export COVER_CI_STRICT="${COVER_CI_STRICT:-1}"' in (ROOT / ".ci/run").read_text()


def test_test_script_installs_what_the_skipping_tests_need(tmp_path):
    import subprocess

    from tests.processes import ROOT

    empty = tmp_path / "empty"
    empty.mkdir()
    script = (f"source {ROOT}/scripts/common.sh; PATH={empty}; COVER_PG_LIB_DIR={empty}; "
              f"COVER_CHROMIUM={empty}/chromium; echo \"$(missing_system_packages --tests)\"; "
              f"echo \"$(missing_system_packages)\"")
    out = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert set(out[0].split()) >= {"strace", "postgresql", "chromium", "espeak-ng"}, out
    assert "strace" not in out[1].split() and "postgresql" not in out[1].split(), out  # runtime: not needed
    assert "ensure_system_packages --tests" in (ROOT / "scripts/test.sh").read_text()
