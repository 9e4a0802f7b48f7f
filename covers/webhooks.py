"""Webhooks: signed POSTs of the job JSON to the URL a job was created with.

- Events: ``start`` (queued -> running), ``progress`` (at most one per
  COVER_WEBHOOK_PROGRESS_INTERVAL seconds per job, across processes: a Redis ``SET NX PX``),
  ``completed`` (succeeded, failed or canceled). A job's ``webhook_events`` picks a subset.
- Signing (the Standard Webhooks scheme): headers ``Webhook-Id`` (one per message, the same on
  every attempt of it), ``Webhook-Timestamp`` (unix seconds of the attempt) and
  ``Webhook-Signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``; the HMAC key is
  the base64-decoded part of the API key's ``webhook_secret`` after ``whsec_``.
- Delivery: the first attempt runs on a small thread pool of the process that changed the job
  (after commit), so a worker never waits for a slow receiver. A non-2xx answer or a network
  error schedules the next attempt as an RQ job on the ``cover-webhooks`` queue with
  ``enqueue_in`` (exponential backoff from COVER_WEBHOOK_RETRY_BASE_SECONDS, capped at
  COVER_WEBHOOK_RETRY_MAX_SECONDS) until COVER_WEBHOOK_RETRY_HOURS after the first attempt.
  The cover worker listens to that queue too (after its own), and RQ's scheduler runs in it.
- Every attempt is a WebhookDelivery row (admin).
- SSRF: only http(s), ports 80/443 unless listed in COVER_WEBHOOK_ALLOWED_PORTS, no control
  characters (raw or percent-encoded: no CR/LF header injection); hosts resolving to private,
  loopback, link-local, reserved or multicast addresses are refused at creation and again at each
  delivery, unless COVER_WEBHOOK_ALLOW_PRIVATE, and so are IPv6 addresses that carry such an IPv4
  address (IPv4-mapped/-compatible, 6to4, NAT64, Teredo). Each delivery resolves the host once,
  checks the addresses and connects to the checked address (the URL's host stays in the Host
  header, TLS SNI and the certificate check): a DNS answer that changes between the check and the
  connection (DNS rebinding) is never used. Proxy variables from the environment are ignored.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from .errors import InvalidParameter

log = logging.getLogger(__name__)

EVENTS = ("start", "progress", "completed")
QUEUE_NAME = "cover-webhooks"
DELIVER_FUNC = "covers.webhooks.webhook_attempt"

_pool: ThreadPoolExecutor | None = None


# --------------------------------------------------------------------------------------------
# URL checks (SSRF)
# --------------------------------------------------------------------------------------------
# IPv6 ranges that carry an IPv4 address, and where it sits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")          # RFC 6052 well-known prefix: last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use translation: never global
_V4_COMPATIBLE = ipaddress.ip_network("::/96")         # deprecated IPv4-compatible (also :: and ::1)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to: IPv4-mapped, IPv4-compatible, 6to4, NAT64,
    Teredo (server and client)."""
    out = []
    if addr.ipv4_mapped is not None:
        out.append(addr.ipv4_mapped)
    if addr.sixtofour is not None:
        out.append(addr.sixtofour)
    if addr.teredo is not None:
        out.extend(addr.teredo)
    if addr in _NAT64 or addr in _V4_COMPATIBLE:
        out.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return out


def _address_refused(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _NAT64_LOCAL or addr in _V4_COMPATIBLE or addr.teredo is not None:
            return True  # translation prefixes that only lead somewhere local (or nowhere)
        if any(_address_refused(str(v4)) for v4 in _embedded_ipv4(addr)):
            return True
        if addr.ipv4_mapped is not None:
            return False  # judged by its IPv4 address just above
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved
            or addr.is_multicast or addr.is_unspecified or not addr.is_global)


def _has_control_chars(text: str, *, spaces: bool) -> bool:
    """Control, format or line/paragraph separator characters (CR/LF would split the request line
    or a header), and with ``spaces`` any space (a raw URL has none; an encoded one is data)."""
    bad = ("Cc", "Cf", "Zl", "Zp", "Zs") if spaces else ("Cc", "Cf", "Zl", "Zp")
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F or (spaces and ch == " ") or unicodedata.category(ch) in bad
               for ch in text)


def _port_allowed(port: int) -> bool:
    allowed = [str(p).strip() for p in settings.COVER_WEBHOOK_ALLOWED_PORTS]
    return "*" in allowed or str(port) in allowed


def _parse(url: str, field: str):
    """(parts, port) of a URL that passes the static checks; InvalidParameter otherwise."""
    if not isinstance(url, str) or not url:
        raise InvalidParameter(f"{field} is not a valid URL", field=field)
    try:
        decoded = unquote(url, errors="strict")
    except UnicodeDecodeError:
        decoded = unquote(url)  # invalid UTF-8 after decoding: still look for control bytes
    if _has_control_chars(url, spaces=True) or _has_control_chars(decoded, spaces=False):
        raise InvalidParameter(f"{field} must not contain spaces or control characters (such as CR/LF), "
                               f"raw or percent-encoded", field=field)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidParameter(f"{field} is not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter(f"{field} must be an http:// or https:// URL", field=field)
    if parts.username or parts.password or "@" in parts.netloc:
        raise InvalidParameter(f"{field} must not contain credentials", field=field)
    port = port if port is not None else (443 if parts.scheme == "https" else 80)
    if not _port_allowed(port):
        raise InvalidParameter(f"{field}: port {port} is not allowed (80 and 443 only, unless listed in "
                               f"COVER_WEBHOOK_ALLOWED_PORTS)", field=field)
    return parts, port


def _resolve(host: str, port: int) -> list[str]:
    """The host's addresses, in getaddrinfo's order (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _checked_addresses(parts, port: int, field: str) -> list[str]:
    """Resolve once and check every address (unless COVER_WEBHOOK_ALLOW_PRIVATE)."""
    try:
        addresses = _resolve(parts.hostname, port)
    except (socket.gaierror, UnicodeError, OSError):
        raise InvalidParameter(f"{field}: the host {parts.hostname!r} does not resolve", field=field) from None
    if not addresses:
        raise InvalidParameter(f"{field}: the host {parts.hostname!r} does not resolve", field=field)
    if not settings.COVER_WEBHOOK_ALLOW_PRIVATE:
        for ip in addresses:
            if _address_refused(ip):
                raise InvalidParameter(f"{field} points to a private, loopback or link-local address "
                                       f"({ip}); webhooks go to public hosts only", field=field)
    return addresses


def webhook_check_url(url: str, *, field: str = "webhook_url") -> str:
    """The URL if a webhook may be sent to it; InvalidParameter (400 naming ``field``) if not."""
    url = url.strip(" ") if isinstance(url, str) else url
    parts, port = _parse(url, field)
    if not settings.COVER_WEBHOOK_ALLOW_PRIVATE:
        _checked_addresses(parts, port, field)
    return url


# --------------------------------------------------------------------------------------------
# delivery to the checked address (no second DNS lookup)
# --------------------------------------------------------------------------------------------
# What TLS verification uses (True: the system's CA store); tests point it at their own CA.
TLS_VERIFY: bool | str = True


def _pinned_post(url: str, *, data: bytes, headers: dict, timeout: float):
    """POST ``url`` after one DNS lookup whose addresses were checked, connecting to the first
    checked address. The request line keeps the URL's path; the Host header, TLS SNI and the
    certificate's hostname check use the URL's host."""
    import requests
    from requests.adapters import HTTPAdapter

    parts, port = _parse(url, "webhook_url")
    ip = _checked_addresses(parts, port, "webhook_url")[0]
    host = parts.hostname
    ascii_host = host if _is_ip(host) else host.encode("idna").decode("ascii")
    default_port = 443 if parts.scheme == "https" else 80
    host_header = (f"[{ascii_host}]" if ":" in ascii_host else ascii_host) + ("" if port == default_port else f":{port}")
    netloc_ip = f"[{ip.split('%', 1)[0]}]" if ":" in ip else ip
    target = f"{parts.scheme}://{netloc_ip}:{port}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")

    class _Pinned(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            if parts.scheme == "https":
                kwargs["server_hostname"] = ascii_host   # SNI
                kwargs["assert_hostname"] = ascii_host   # the certificate must name the URL's host
            super().init_poolmanager(*args, **kwargs)

    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment: the checked address is the peer
        session.mount(f"{parts.scheme}://", _Pinned(max_retries=0))
        return session.post(target, data=data, headers={**headers, "Host": host_header}, timeout=timeout,
                            allow_redirects=False, verify=TLS_VERIFY)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def webhook_check_events(events) -> list[str]:
    events = list(dict.fromkeys(events or EVENTS))
    bad = [e for e in events if e not in EVENTS]
    if bad:
        raise InvalidParameter(f"webhook_events: unknown event {bad[0]!r}; use {', '.join(EVENTS)}",
                               field="webhook_events")
    return events


# --------------------------------------------------------------------------------------------
# signing
# --------------------------------------------------------------------------------------------
def _key_bytes(secret: str) -> bytes:
    raw = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(raw, validate=True)
    except Exception:
        return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key_bytes(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers, body: bytes) -> bool:
    """For receivers (and the tests): does one of the ``v1,`` signatures match?"""
    expected = sign(secret, headers["Webhook-Id"], int(headers["Webhook-Timestamp"]), body)
    return any(hmac.compare_digest(expected, s) for s in headers["Webhook-Signature"].split())


# --------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------
def _progress_allowed(job_id) -> bool:
    from .queue import redis_connection

    ms = int(settings.COVER_WEBHOOK_PROGRESS_INTERVAL * 1000)
    if ms <= 0:
        return True
    try:
        return bool(redis_connection().set(f"cover:webhook:progress:{job_id}", "1", nx=True, px=ms))
    except Exception:
        return True


def webhook_job_event(job, event: str) -> None:
    """Called by covers.services on a state change: schedule a delivery after the commit when the
    job wants ``event``. Never raises into the caller."""
    try:
        if not job.webhook_url or event not in (job.webhook_events or EVENTS):
            return
        if event == "progress" and not _progress_allowed(job.id):
            return
        from .apis import CoverJobOutputSerializer

        body = json.dumps(CoverJobOutputSerializer(job).data, separators=(",", ":"), default=str)
        message_id = f"msg_{uuid.uuid4().hex}"
        args = (str(job.id), event, message_id, body, 1, time.time())
        transaction.on_commit(lambda: _submit(args), robust=True)
    except Exception:
        log.exception("webhook %s for %s not scheduled", event, getattr(job, "id", "?"))


def _submit(args) -> None:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=settings.COVER_WEBHOOK_THREADS, thread_name_prefix="webhook")
    _pool.submit(_attempt_in_thread, *args)


def _attempt_in_thread(*args) -> None:
    try:
        webhook_attempt(*args)
    except Exception:
        log.exception("webhook attempt failed")
    finally:
        close_old_connections()
        from django.db import connection

        connection.close()


def retry_delay(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``."""
    base = float(settings.COVER_WEBHOOK_RETRY_BASE_SECONDS)
    return min(float(settings.COVER_WEBHOOK_RETRY_MAX_SECONDS), base * 2 ** (attempt - 1))


def webhook_attempt(job_id: str, event: str, message_id: str, body: str, attempt: int, first_at: float) -> int | None:
    """One delivery attempt (first one in a thread, retries as RQ jobs): POST, record, and
    schedule the next attempt on failure. Returns the HTTP status (None: no answer)."""
    from .models import CoverJob, WebhookDelivery

    job = CoverJob.objects.select_related("owner").filter(pk=job_id).first()
    if job is None or not job.webhook_url:
        return None
    url = job.webhook_url
    secret = job.owner.webhook_secret if job.owner_id and job.owner else ""
    status = None
    error = ""
    t0 = time.monotonic()
    try:
        ts = int(time.time())
        data = body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": "cover-webhooks/1",
                   "Webhook-Id": message_id, "Webhook-Timestamp": str(ts),
                   "Webhook-Signature": sign(secret, message_id, ts, data), "Webhook-Event": event}
        # checks the URL again (DNS may have changed since the job was created) and connects to
        # the address it checked
        resp = _pinned_post(url, data=data, headers=headers, timeout=settings.COVER_WEBHOOK_TIMEOUT_SECONDS)
        status = resp.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except InvalidParameter as exc:
        error = exc.message
    except Exception as exc:
        error = f"{exc.__class__.__name__}: {str(exc)[:300]}"
    duration_ms = int((time.monotonic() - t0) * 1000)
    delivered = status is not None and 200 <= status < 300
    next_at = None
    if not delivered:
        delay = retry_delay(attempt)
        if time.time() + delay <= first_at + settings.COVER_WEBHOOK_RETRY_HOURS * 3600:
            next_at = timezone.now() + timedelta(seconds=delay)
    WebhookDelivery.objects.create(job=job, message_id=message_id, event=event, attempt=attempt, url=url,
                                   status_code=status, error=error[:2000], duration_ms=duration_ms,
                                   delivered=delivered, next_retry_at=next_at)
    if next_at is not None:
        try:
            webhook_queue().enqueue_in(timedelta(seconds=retry_delay(attempt)), DELIVER_FUNC,
                                       job_id, event, message_id, body, attempt + 1, first_at,
                                       job_timeout=int(settings.COVER_WEBHOOK_TIMEOUT_SECONDS) + 30,
                                       result_ttl=600, failure_ttl=86400,
                                       description=f"webhook {event} {message_id} attempt {attempt + 1}")
        except Exception as exc:
            log.warning("webhook retry for %s not scheduled: %s", job_id, exc)
            WebhookDelivery.objects.filter(message_id=message_id, attempt=attempt).update(
                next_retry_at=None, error=f"{error}; retry not scheduled ({exc.__class__.__name__})"[:2000])
    return status


def webhook_queue():
    from rq import Queue

    from .queue import redis_connection

    return Queue(QUEUE_NAME, connection=redis_connection())


def webhook_secret_rotate(*, api_key) -> str:
    from .models import APIKey, new_webhook_secret

    secret = new_webhook_secret()
    APIKey.objects.filter(pk=api_key.pk).update(webhook_secret=secret)
    api_key.webhook_secret = secret
    return secret
