/* The cover page: upload with progress, then follow the job live over WebSocket.
 * Plain JavaScript, no build step. Talks to the REST API with the session (CSRF header on
 * writes) and to ws/cover/jobs/... with the same session cookie. The server sends a snapshot on
 * every (re)connect, so a dropped connection only costs a reconnect.
 */
(function () {
  "use strict";

  var STAGES = (window.COVER && window.COVER.stages) || ["preprocess", "separate", "infer", "mix", "finalize"];
  var TERMINAL = { succeeded: true, failed: true, canceled: true };
  var API = "/api/v1/cover";
  var $ = function (id) { return document.getElementById(id); };

  // Every WebSocket event received, for debugging (and the browser test).
  window.coverEvents = [];

  function cookie(name) {
    var m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }

  function errorText(body, status) {
    if (body && body.error && body.error.message) {
      return body.error.message + (body.error.field ? " (" + body.error.field + ")" : "");
    }
    if (body && body.detail) return body.detail;
    return "The server answered " + status + ".";
  }

  function api(method, path) {
    var opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (method !== "GET") opts.headers["X-CSRFToken"] = cookie("csrftoken");
    return fetch(API + path, opts).then(function (resp) {
      return resp.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!resp.ok) {
          var err = new Error(errorText(body, resp.status));
          err.status = resp.status;
          throw err;
        }
        return body;
      });
    });
  }

  function fmtElapsed(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    var mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
  }

  function wsUrl(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  }

  /* A WebSocket that reconnects with exponential backoff (0.5 s .. 15 s, with jitter) unless
   * it closed normally (1000) or was refused (4401/4403/4404), or stop() was called. */
  function LiveSocket(path, handlers) {
    this.path = path;
    this.handlers = handlers;
    this.attempt = 0;
    this.stopped = false;
    this.timer = null;
    this.open();
  }
  LiveSocket.prototype.open = function () {
    var self = this;
    var ws = new WebSocket(wsUrl(this.path));
    this.ws = ws;
    ws.onopen = function () { self.attempt = 0; if (self.handlers.state) self.handlers.state("live"); };
    ws.onmessage = function (msg) {
      var data;
      try { data = JSON.parse(msg.data); } catch (e) { return; }
      window.coverEvents.push(data);
      self.handlers.message(data);
    };
    ws.onclose = function (ev) {
      if (self.ws !== ws) return;
      if (self.stopped) return;
      if (ev.code === 1000 || (ev.code >= 4400 && ev.code < 4500)) {
        if (self.handlers.state) self.handlers.state(ev.code === 1000 ? "done" : "refused", ev.code);
        return;
      }
      var delay = Math.min(15000, 500 * Math.pow(2, self.attempt)) * (0.75 + Math.random() * 0.5);
      self.attempt += 1;
      if (self.handlers.state) self.handlers.state("reconnecting");
      self.timer = setTimeout(function () { if (!self.stopped) self.open(); }, delay);
    };
  };
  LiveSocket.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws && this.ws.readyState <= 1) this.ws.close(1000);
  };

  // ------------------------------------------------------------------------------------------
  // the form
  // ------------------------------------------------------------------------------------------
  function setupDrop(label) {
    var input = label.querySelector("input[type=file]");
    var name = label.querySelector(".drop-file");
    function show() {
      var f = input.files && input.files[0];
      name.textContent = f ? f.name + " (" + (f.size / 1048576).toFixed(1) + " MB)" : name.dataset.empty;
      label.classList.toggle("has-file", !!f);
    }
    input.addEventListener("change", show);
    ["dragenter", "dragover"].forEach(function (t) {
      label.addEventListener(t, function (e) { e.preventDefault(); label.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (t) {
      label.addEventListener(t, function (e) { e.preventDefault(); label.classList.remove("over"); });
    });
    label.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        show();
      }
    });
  }

  function loadModels() {
    // The voice model registry (GET /api/v1/cover/models); without one, the default engine only.
    api("GET", "/models").then(function (body) {
      var items = Array.isArray(body) ? body : (body && body.results) || [];
      var select = $("model_id"), defaults = {};
      var steps = {separator_model: $("separator_model"), karaoke_model: $("karaoke_model"),
                   dereverb_model: $("dereverb_model")};
      items.forEach(function (m) {
        if (!m || !m.model_id) return;
        if (m.use_as && m.use_as !== "model_id") {
          // a separator model: offered in its step's list
          var target = steps[m.use_as];
          if (!target) return;
          var o = document.createElement("option");
          o.value = m.model_id;
          o.textContent = (m.name || m.model_id) + (m.kind ? " (" + m.kind + ")" : "");
          target.appendChild(o);
          return;
        }
        var opt = document.createElement("option");
        opt.value = m.model_id;
        opt.textContent = (m.name || m.model_id) + (m.kind || m.engine ? " (" + (m.kind || m.engine) + ")" : "");
        defaults[m.model_id] = m.defaults || {};
        select.appendChild(opt);
        if (m.is_default) {
          select.options[0].textContent = "default: " + (m.name || m.model_id);
          defaults[""] = m.defaults || {};
        }
      });
      select.addEventListener("change", function () {
        var d = defaults[select.value] || {};
        if (typeof d.pitch_shift === "number") {
          $("pitch_shift").value = Math.max(-12, Math.min(12, Math.round(d.pitch_shift)));
          $("pitch_shift").dispatchEvent(new Event("input"));
        }
        if (typeof d.auto_pitch === "boolean") $("auto_pitch").checked = d.auto_pitch;
      });
    }).catch(function () { /* no registry */ });
  }

  function submitForm(e) {
    e.preventDefault();
    var form = $("cover-form"), err = $("form-error");
    err.hidden = true;
    var song = $("song").files[0], ref = $("reference_voice").files[0];
    if (!song || !ref) {
      err.textContent = "Choose both a song and a reference voice.";
      err.hidden = false;
      return;
    }
    var data = new FormData();
    data.append("song", song);
    data.append("reference_voice", ref);
    data.append("pitch_shift", $("pitch_shift").value);
    data.append("auto_pitch", $("auto_pitch").checked ? "true" : "false");
    if ($("model_id").value) data.append("model_id", $("model_id").value);
    ["separator_model", "karaoke_model", "dereverb_model"].forEach(function (name) {
      if ($(name) && $(name).value) data.append(name, $(name).value);
    });
    if ($("karaoke_model") && $("karaoke_model").value && $("convert_backing").checked) {
      data.append("convert_backing", "true");
    }
    if ($("models-extra") && $("models-extra").open) {
      data.append("index_rate", $("index_rate").value);
      data.append("protect", $("protect").value);
    }
    data.append("reference_text", $("reference_text").value);
    data.append("target_text", $("target_text").value);

    var xhr = new XMLHttpRequest();
    var bar = $("upload-progress"), text = $("upload-text"), submit = $("submit");
    $("upload").hidden = false;
    bar.value = 0;
    text.textContent = "Uploading\u2026";
    submit.disabled = true;
    xhr.upload.onprogress = function (ev) {
      if (!ev.lengthComputable) return;
      var pct = Math.round((ev.loaded / ev.total) * 100);
      bar.value = pct;
      text.textContent = pct < 100 ? "Uploading " + pct + "%" : "Checking the files\u2026";
    };
    xhr.onload = function () {
      submit.disabled = false;
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (x) { body = null; }
      if (xhr.status === 201 && body) {
        $("upload").hidden = true;
        follow(body);
        addOrUpdateRow(body, true);
      } else {
        $("upload").hidden = true;
        err.textContent = errorText(body, xhr.status);
        err.hidden = false;
      }
    };
    xhr.onerror = function () {
      submit.disabled = false;
      $("upload").hidden = true;
      err.textContent = "The upload failed (network error). Try again.";
      err.hidden = false;
    };
    xhr.open("POST", API + "/jobs");
    xhr.setRequestHeader("X-CSRFToken", cookie("csrftoken"));
    xhr.setRequestHeader("Accept", "application/json");
    xhr.send(data);
    form.dataset.submitted = "1";
  }

  // ------------------------------------------------------------------------------------------
  // the job being followed
  // ------------------------------------------------------------------------------------------
  var current = null;  // {id, detail, socket, timer, status}

  function follow(detail) {
    if (current) {
      if (current.socket) current.socket.stop();
      clearInterval(current.timer);
    }
    current = { id: detail.job_id, detail: detail, status: detail.status, resultsShown: false };
    var section = $("job");
    section.hidden = false;
    section.dataset.jobId = detail.job_id;
    $("job-id").textContent = detail.job_id.slice(0, 8);
    $("job-id").title = detail.job_id;
    $("job-error").hidden = true;
    $("results").hidden = true;
    $("tracks").innerHTML = "";
    $("cancel").hidden = false;
    $("cancel").disabled = false;
    render({ job_id: detail.job_id, status: detail.status, stage: detail.stage, progress: detail.progress,
             error_message: detail.error_message });
    current.timer = setInterval(tick, 1000);
    tick();
    var job = current;
    job.socket = new LiveSocket("/ws/cover/jobs/" + detail.job_id + "/", {
      message: function (ev) { if (ev.type === "job.update" && job === current) render(ev); },
      state: function (state, code) {
        var conn = $("job-conn");
        conn.textContent = state === "reconnecting" ? "\u00b7 reconnecting\u2026" : (state === "live" ? "\u00b7 live" : "");
        if (state === "refused") {
          showError(code === 4401 ? "Your session has ended; log in again." :
                    "This job can't be followed (" + code + ").");
        }
      },
    });
    section.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function tick() {
    if (!current) return;
    var d = current.detail;
    var start = Date.parse(d.created_at);
    var end = d.finished_at ? Date.parse(d.finished_at) : (TERMINAL[current.status] ? current.endedAt : Date.now());
    if (!isNaN(start)) $("job-elapsed").textContent = fmtElapsed(((end || Date.now()) - start) / 1000);
  }

  function showError(msg, kind) {
    var el = $("job-error");
    el.textContent = msg;
    el.className = kind === "notice" ? "notice" : "error";
    el.hidden = false;
  }

  function render(ev) {
    if (!current || ev.job_id !== current.id) return;
    var key = orderKey(ev);
    if (current.key && (olderThan(key, current.key) || current.key[0] === 2)) return;
    current.key = key;
    var status = ev.status;
    current.status = status;
    var section = $("job");
    section.dataset.status = status;
    var badge = $("job-status");
    badge.textContent = status;
    badge.className = "badge " + status;
    var idx = ev.stage ? STAGES.indexOf(ev.stage) : -1;
    var items = $("steps").querySelectorAll("li");
    for (var i = 0; i < items.length; i++) {
      var li = items[i];
      li.className = "";
      li.removeAttribute("aria-current");
      if (status === "succeeded" || i < idx) li.className = "done";
      else if (i === idx) {
        li.className = status === "failed" ? "failed" : (status === "canceled" ? "stopped" : "current");
        li.setAttribute("aria-current", "step");
      }
    }
    var pct = Math.max(0, Math.min(100, ev.progress | 0));
    $("job-progress").value = pct;
    $("job-percent").textContent = pct + "%";
    if (TERMINAL[status]) {
      current.endedAt = ev.ts ? Date.parse(ev.ts) : Date.now();
      clearInterval(current.timer);
      $("cancel").hidden = true;
      $("job-conn").textContent = "";
      if (status === "failed") showError("The cover failed: " + (ev.error_message || "unknown error") + ".");
      if (status === "canceled") showError("Canceled.", "notice");
      refreshDetail(status === "succeeded");
    }
    updateRow(ev);
  }

  function refreshDetail(withResults) {
    var job = current;
    api("GET", "/jobs/" + job.id).then(function (d) {
      if (job !== current) return;
      job.detail = d;
      tick();
      if (withResults && d.status === "succeeded" && !job.resultsShown) {
        job.resultsShown = true;
        showResults(d);
      }
    }).catch(function (e) { showError("Could not load the job: " + e.message); });
  }

  function cancelJob() {
    if (!current) return;
    var btn = $("cancel");
    btn.disabled = true;
    api("POST", "/jobs/" + current.id + "/cancel").then(function (d) {
      render({ job_id: d.job_id, status: d.status, stage: d.stage, progress: d.progress,
               error_message: d.error_message });
    }).catch(function (e) { btn.disabled = false; showError(e.message); });
  }

  // ------------------------------------------------------------------------------------------
  // results: players, downloads, waveforms drawn from the decoded audio
  // ------------------------------------------------------------------------------------------
  var TRACKS = [["result", "Cover"], ["vocals", "Original vocals"], ["instrumental", "Instrumental"],
                ["converted_vocals", "Converted vocals"]];

  function showResults(d) {
    var links = d.links || {}, artifacts = links.artifacts || {};
    var box = $("tracks");
    box.innerHTML = "";
    TRACKS.forEach(function (t) {
      var url = t[0] === "result" ? links.result : artifacts[t[0]];
      if (!url) return;
      var fig = document.createElement("figure");
      fig.className = "track";
      fig.dataset.track = t[0];
      var cap = document.createElement("figcaption");
      var title = document.createElement("span");
      title.textContent = t[1];
      var a = document.createElement("a");
      a.href = url;
      a.className = "download";
      a.setAttribute("download", t[0] + "-" + d.job_id + ".wav");
      a.textContent = "Download WAV";
      cap.appendChild(title);
      cap.appendChild(a);
      var canvas = document.createElement("canvas");
      canvas.className = "wave";
      canvas.height = 64;
      var audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "metadata";
      fig.appendChild(cap);
      fig.appendChild(canvas);
      fig.appendChild(audio);
      box.appendChild(fig);
      loadTrack(url, audio, canvas, fig);
    });
    showQuality(d);
    $("results").hidden = false;
  }

  // the quality report (inference.quality): pitch accuracy, speaker similarity, warning
  function showQuality(d) {
    var q = d.quality, p = $("quality");
    if (!p) {
      p = document.createElement("p");
      p.id = "quality";
      p.className = "meta";
      $("results").insertBefore(p, $("tracks"));
    }
    p.hidden = !q;
    if (!q) return;
    var pct = function (v) { return v === null || v === undefined ? "n/a" : Math.round(v * 100) + "%"; };
    var sim = function (v) { return v === null || v === undefined ? "n/a" : v.toFixed(2); };
    p.textContent = "Pitch accuracy " + pct(q.pitch_accuracy) + " (within 50 cents of the melody) \u00b7 " +
      "similarity to the reference voice " + sim(q.speaker_similarity) +
      " (original singer " + sim(q.original_similarity) + ")" +
      (d.quality_warning ? " \u2014 warning: the converted vocal strays from the melody" : "");
    p.classList.toggle("error", !!d.quality_warning);
  }

  function loadTrack(url, audio, canvas, fig) {
    fetch(url, { credentials: "same-origin" }).then(function (resp) {
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.arrayBuffer();
    }).then(function (buf) {
      audio.src = URL.createObjectURL(new Blob([buf], { type: "audio/wav" }));
      var Ctx = window.OfflineAudioContext || window.webkitOfflineAudioContext;
      var ctx = new Ctx(1, 1, 44100);
      return new Promise(function (resolve, reject) {
        var p = ctx.decodeAudioData(buf.slice(0), resolve, reject);
        if (p && p.then) p.then(resolve, reject);
      });
    }).then(function (decoded) {
      fig.dataset.decoded = "1";
      fig.dataset.duration = decoded.duration.toFixed(3);
      drawWave(canvas, decoded);
    }).catch(function (e) {
      fig.dataset.decoded = "0";
      var p = document.createElement("p");
      p.className = "error";
      p.textContent = "Could not load this file: " + e.message;
      fig.appendChild(p);
    });
  }

  function drawWave(canvas, buffer) {
    var width = canvas.clientWidth || 600;
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(64 * ratio);
    var g = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, mid = h / 2;
    var chans = [];
    for (var c = 0; c < buffer.numberOfChannels; c++) chans.push(buffer.getChannelData(c));
    var n = chans[0].length, step = Math.max(1, Math.floor(n / w));
    g.clearRect(0, 0, w, h);
    g.fillStyle = getComputedStyle(canvas).color || "#4a6cf7";
    for (var x = 0; x < w; x++) {
      var lo = 0, hi = 0, start = x * step, end = Math.min(n, start + step);
      for (var ci = 0; ci < chans.length; ci++) {
        var data = chans[ci];
        for (var i = start; i < end; i++) {
          var v = data[i];
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
      var top = mid - hi * mid, bottom = mid - lo * mid;
      g.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
  }

  // ------------------------------------------------------------------------------------------
  // recent jobs, live over ws/cover/jobs/
  // ------------------------------------------------------------------------------------------
  var rows = {};

  function addOrUpdateRow(d, top) {
    var list = $("jobs");
    var li = rows[d.job_id];
    if (!li) {
      li = document.createElement("li");
      li.dataset.jobId = d.job_id;
      var btn = document.createElement("button");
      btn.type = "button";
      btn.className = "job-link";
      var when = document.createElement("span");
      when.className = "when";
      var created = d.created_at ? new Date(d.created_at) : new Date();
      when.textContent = created.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit",
                                                       minute: "2-digit" });
      var id = document.createElement("code");
      id.textContent = d.job_id.slice(0, 8);
      var badge = document.createElement("span");
      badge.className = "badge";
      btn.appendChild(id);
      btn.appendChild(when);
      btn.appendChild(badge);
      btn.addEventListener("click", function () {
        api("GET", "/jobs/" + d.job_id).then(follow).catch(function (e) { alert(e.message); });
      });
      li.appendChild(btn);
      rows[d.job_id] = li;
      if (top) list.insertBefore(li, list.firstChild); else list.appendChild(li);
      $("recent-empty").hidden = true;
    }
    updateRow(d);
  }

  // How far along an event is: the page hears a job on two sockets (the job's and the list's), so
  // an older event may arrive after a newer one; never let a row go backwards.
  var RANK = { queued: 0, running: 1 };
  function orderKey(ev) {
    var rank = ev.status in RANK ? RANK[ev.status] : 2;
    return [rank, ev.progress | 0, ev.stage ? STAGES.indexOf(ev.stage) : -1];
  }
  function olderThan(a, b) {
    for (var i = 0; i < 3; i++) { if (a[i] !== b[i]) return a[i] < b[i]; }
    return false;
  }

  function updateRow(ev) {
    var li = rows[ev.job_id];
    if (!li) return;
    var key = orderKey(ev);
    if (li._key && (olderThan(key, li._key) || li._key[0] === 2)) return;
    li._key = key;
    var badge = li.querySelector(".badge");
    var label = ev.status === "running" ? (ev.stage || "running") + " " + (ev.progress | 0) + "%" : ev.status;
    badge.textContent = label;
    badge.className = "badge " + ev.status;
    li.dataset.status = ev.status;
  }

  function startRecent() {
    api("GET", "/jobs?page_size=10").then(function (body) {
      (body.results || []).forEach(function (d) { addOrUpdateRow(d, false); });
    }).catch(function () {}).then(function () {
      new LiveSocket("/ws/cover/jobs/", {
        message: function (ev) {
          if (ev.type !== "job.update") return;
          if (rows[ev.job_id]) { updateRow(ev); return; }
          api("GET", "/jobs/" + ev.job_id).then(function (d) {
            if (!rows[d.job_id]) addOrUpdateRow(d, true);
            updateRow(ev);
          }).catch(function () {});
        },
      });
    });
  }

  // ------------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", init);
  if (document.readyState !== "loading") init();
  var started = false;
  function init() {
    if (started || !$("cover-form")) return;
    started = true;
    Array.prototype.forEach.call(document.querySelectorAll(".drop"), setupDrop);
    var pitch = $("pitch_shift");
    pitch.addEventListener("input", function () {
      $("pitch-value").textContent = (pitch.value > 0 ? "+" : "") + pitch.value;
    });
    [["index_rate", "index-rate-value"], ["protect", "protect-value"]].forEach(function (pair) {
      var input = $(pair[0]);
      if (input) input.addEventListener("input", function () { $(pair[1]).textContent = input.value; });
    });
    $("cover-form").addEventListener("submit", submitForm);
    $("cancel").addEventListener("click", cancelJob);
    loadModels();
    startRecent();
  }
})();
