/* LlamaHome Cache dashboard: polls /api/stats and /api/history, draws with uPlot (vendored, MIT).
 * Every value reaches the page through textContent, never innerHTML: model and dataset names are data. */
(function () {
  "use strict";

  var meta = function (name) { var el = document.querySelector('meta[name="' + name + '"]'); return el ? el.content : ""; };
  var TOKEN = decodeURIComponent(meta("llamahome-token") || "");
  var REFRESH_MS = Math.max(100, parseInt(meta("llamahome-refresh-ms"), 10) || 2000);
  var HEADERS = TOKEN ? { Authorization: "Bearer " + TOKEN } : {};
  var $ = function (id) { return document.getElementById(id); };

  var state = { source: "recent", history: null, lastStats: null, updates: 0, charts: {}, busy: false };

  // --- formatting -------------------------------------------------------------------------------------
  function pct(x) { return (x * 100).toFixed(1) + "%"; }
  function compact(v) {
    var a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
    return a >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1);
  }
  function num(n) { return (n || 0).toLocaleString("en-US"); }
  function bytes(n) {
    n = Number(n) || 0;
    if (Math.abs(n) < 1024) return Math.round(n) + " B";
    var units = ["KiB", "MiB", "GiB", "TiB"];
    for (var i = 0; i < units.length; i++) {
      n /= 1024;
      if (Math.abs(n) < 999.95 || i === units.length - 1) return (Math.abs(n) < 100 ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
    }
  }
  function ago(t, now) {
    if (!t) return "never";
    var s = Math.max(0, now - t);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return (s / 3600).toFixed(1) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function duration(s) {
    if (s == null) return "–";
    if (s < 60) return Math.round(s) + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888"; }
  function niceLabel(label) {
    var names = { "manager/all": "all lookups", "cache/memory": "memory", "cache/disk": "disk", "cache/network": "redis",
      "model_cache/disk": "models", "training_cache/disk": "training", "system_cache/disk": "scratch" };
    return names[label] || label;
  }

  // --- fetching ---------------------------------------------------------------------------------------
  function getJSON(path) {
    return fetch(path, { headers: HEADERS, cache: "no-store", credentials: "same-origin" }).then(function (r) {
      if (!r.ok) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          throw new Error(body.error || (r.status + " " + r.statusText));
        });
      }
      return r.json();
    });
  }
  function postJSON(path, body) {
    var headers = { "Content-Type": "application/json" };
    for (var k in HEADERS) headers[k] = HEADERS[k];
    return fetch(path, { method: "POST", headers: headers, body: JSON.stringify(body || {}), cache: "no-store" })
      .then(function (r) { return r.json().then(function (data) { if (!r.ok) throw new Error(data.error || r.status); return data; }); });
  }

  function mergeHistory(h) {
    var old = state.history;
    if (!old || old.source !== h.source) { state.history = h; return; }
    var n = h.time.length;
    if (!n) return;
    old.time = old.time.concat(h.time);
    var labels = Object.keys(Object.assign({}, old.series, h.series));
    labels.forEach(function (label) {
      var a = old.series[label], b = h.series[label];
      old.series[label] = a = a || blankSeries(old.fields, old.time.length - n);
      old.fields.forEach(function (f) { a[f] = a[f].concat(b ? b[f] : new Array(n).fill(null)); });
    });
    // Keep the window bounded like the server's ring (30 min at the default refresh, 6 h for the monitor).
    var keep = h.source === "recent" ? Math.max(60, Math.ceil(1800 / (h.interval || 2))) : 360;
    var extra = old.time.length - keep;
    if (extra > 0) {
      old.time = old.time.slice(extra);
      Object.keys(old.series).forEach(function (label) {
        old.fields.forEach(function (f) { old.series[label][f] = old.series[label][f].slice(extra); });
      });
    }
  }
  function blankSeries(fields, n) { var s = {}; fields.forEach(function (f) { s[f] = new Array(n).fill(null); }); return s; }

  function tick() {
    var h = state.history;
    var since = h && h.time.length && h.source === state.source ? "&since=" + h.time[h.time.length - 1] : "";
    var source = state.source;
    Promise.all([getJSON("api/stats"), getJSON("api/history?source=" + source + since)])
      .then(function (res) {
        if (source === state.source) mergeHistory(res[1]);
        render(res[0]);
        drawCharts();
        state.updates += 1;
        document.body.setAttribute("data-updates", String(state.updates));
        setStatus("live", "live");
        $("updated").textContent = "updated " + new Date(res[0].time * 1000).toLocaleTimeString();
      })
      .catch(function (err) { setStatus("error", String(err.message || err)); })
      .then(function () { setTimeout(tick, REFRESH_MS); });
  }
  function setStatus(kind, text) {
    var s = $("status");
    s.className = "pill pill-" + (kind === "live" ? "live" : kind === "error" ? "error" : "wait");
    s.textContent = text;
    s.title = text;
  }

  // --- rendering --------------------------------------------------------------------------------------
  function fillTable(id, rows) {
    var body = document.querySelector("#" + id + " tbody");
    body.replaceChildren.apply(body, rows);
  }
  function usedCell(used, max) {
    var td = el("td"), wrap = el("div", null, "used"), bar = el("span", null, "bar wide"), fill = el("span");
    var share = max ? Math.min(1, used / max) : 0;
    fill.style.width = (share * 100).toFixed(1) + "%";
    if (share > 0.9) fill.className = "hot";
    bar.appendChild(fill);
    wrap.appendChild(bar);
    wrap.appendChild(el("span", max ? bytes(used) + " of " + bytes(max) : bytes(used)));
    td.appendChild(wrap);
    return td;
  }
  function setBar(id, used, max) { $(id).style.width = (max ? Math.min(100, 100 * used / max) : 0).toFixed(1) + "%"; }

  function render(s) {
    state.lastStats = s;
    var m = s.manager, gets = m.hits + m.misses, caches = s.caches;
    $("subtitle").textContent = "v" + s.version + " · up " + duration(s.uptime) + " · refresh " + s.refresh + " s" +
      (s.actions ? " · actions on" : "");
    $("hit-rate").textContent = pct(s.hit_rate);
    $("hit-note").textContent = num(m.hits) + " hits of " + num(gets) + " lookups";
    $("lookups").textContent = num(gets);
    $("lookups-note").textContent = num(m.misses) + " misses";
    var mem = caches["cache/memory"], disk = caches["cache/disk"];
    if (mem) { $("memory-used").textContent = bytes(mem.bytes); $("memory-note").textContent = "of " + bytes(mem.max_bytes); setBar("memory-bar", mem.bytes, mem.max_bytes); }
    if (disk) { $("disk-used").textContent = bytes(disk.bytes); $("disk-note").textContent = "of " + bytes(disk.max_bytes); setBar("disk-bar", disk.bytes, disk.max_bytes); }
    $("evictions").textContent = num(s.eviction_count);
    var perMin = latestEvictionsPerMinute();
    $("evictions-note").textContent = perMin == null ? "all caches" : compact(perMin) + " / min now";

    fillTable("caches", Object.keys(caches).map(function (label) {
      var c = caches[label], tr = el("tr"), g = c.hits + c.misses;
      tr.setAttribute("data-cache", label);
      tr.appendChild(el("td", c.cache, "name"));
      tr.appendChild(el("td", c.tier));
      tr.appendChild(el("td", g ? pct(c.hit_rate) : "–", "num"));
      tr.appendChild(el("td", num(c.hits), "num"));
      tr.appendChild(el("td", num(c.misses), "num"));
      tr.appendChild(el("td", num(c.entries), "num"));
      tr.appendChild(usedCell(c.bytes, c.max_bytes));
      tr.appendChild(el("td", num(c.evictions), "num"));
      tr.appendChild(el("td", c.raw_bytes ? c.compression_ratio.toFixed(2) : "–", "num"));
      return tr;
    }));
    $("action-cleanup").hidden = !s.actions;

    var now = s.time;
    $("models-count").textContent = s.models.length ? "(" + s.models.length + ")" : "";
    var mc = caches["model_cache/disk"];
    $("models-budget").textContent = mc ? bytes(mc.bytes) + " of " + bytes(mc.max_bytes) : "";
    $("models-empty").hidden = s.models.length > 0;
    fillTable("models", s.models.map(function (x) {
      var tr = el("tr"), tags = el("td");
      tr.setAttribute("data-model", x.name);
      tr.appendChild(el("td", x.name, "name"));
      tr.appendChild(el("td", bytes(x.size), "num"));
      tr.appendChild(el("td", x.ratio != null ? x.ratio.toFixed(2) : "–", "num"));
      tr.appendChild(el("td", ago(x.last_used, now)));
      tr.appendChild(el("td", num(x.hits), "num"));
      if (x.pinned) tags.appendChild(el("span", "pinned", "tag pin"));
      if (s.actions && !x.pinned) {
        var b = el("button", "Prune", "action danger");
        b.type = "button";
        b.addEventListener("click", function () { prune(x.name); });
        tags.appendChild(b);
      }
      tr.appendChild(tags);
      return tr;
    }));

    $("datasets-count").textContent = s.datasets.length ? "(" + s.datasets.length + ")" : "";
    var tc = caches["training_cache/disk"];
    $("datasets-budget").textContent = tc ? bytes(tc.bytes) + " of " + bytes(tc.max_bytes) : "";
    $("datasets-empty").hidden = s.datasets.length > 0;
    fillTable("datasets", s.datasets.map(function (d) {
      var tr = el("tr"), tags = el("td");
      tr.setAttribute("data-dataset", d.dataset_id);
      tr.appendChild(el("td", d.dataset_id, "name"));
      tr.appendChild(el("td", num(d.batches) + (d.total != null ? " / " + num(d.total) : ""), "num"));
      tr.appendChild(el("td", bytes(d.bytes), "num"));
      tr.appendChild(el("td", ago(d.used, now)));
      if (d.complete) tags.appendChild(el("span", "complete", "tag ok"));
      if (d.in_use) tags.appendChild(el("span", "in use", "tag pin"));
      tr.appendChild(tags);
      return tr;
    }));

    var sc = s.scratch, facts = [
      ["Items", num(sc.items) + " (" + num(sc.files) + " files, " + num(sc.dirs) + " dirs)"],
      ["Used", bytes(sc.bytes) + " of " + bytes(sc.max_bytes)],
      ["In use now", num(sc.in_use)],
      ["Oldest", duration(sc.oldest_age)],
      ["Removed after", duration(sc.max_age)]
    ];
    var dl = $("scratch"), nodes = [];
    facts.forEach(function (f) { nodes.push(el("dt", f[0]), el("dd", f[1])); });
    dl.replaceChildren.apply(dl, nodes);

    var ul = $("advice");
    if (!s.recommendations.length) {
      ul.replaceChildren(el("li", "Nothing to change: the caches look healthy.", "none"));
    } else {
      ul.replaceChildren.apply(ul, s.recommendations.map(function (r) {
        var li = el("li", null, r.severity);
        li.appendChild(el("span", r.severity, "sev"));
        li.appendChild(document.createTextNode(r.message));
        return li;
      }));
    }
  }

  // --- charts -----------------------------------------------------------------------------------------
  var PALETTE = ["--c1", "--c2", "--c3", "--c4", "--c5", "--c6"];

  // Hit rate over a short sliding window (about 10 s of samples), so the line shows the recent rate, not
  // the all-time average; null where nobody asked anything.
  function windowedRate(h, label) {
    var s = h.series[label], n = h.time.length, out = new Array(n).fill(null);
    if (!s) return out;
    var w = Math.max(1, Math.round(10 / (h.interval || 2)));
    for (var i = 1; i < n; i++) {
      var j = Math.max(0, i - w);
      if (s.hits[i] == null || s.hits[j] == null) continue;
      var dh = s.hits[i] - s.hits[j], dm = s.misses[i] - s.misses[j];
      if (dh + dm > 0 && dh >= 0 && dm >= 0) out[i] = 100 * dh / (dh + dm);
    }
    return out;
  }
  function perMinute(h, label, field) {
    var s = h.series[label], n = h.time.length, out = new Array(n).fill(null);
    if (!s) return out;
    for (var i = 1; i < n; i++) {
      var dt = h.time[i] - h.time[i - 1];
      if (s[field][i] == null || s[field][i - 1] == null || dt <= 0) continue;
      out[i] = Math.max(0, 60 * (s[field][i] - s[field][i - 1]) / dt);
    }
    return out;
  }
  function usedPct(h, label) {
    var s = h.series[label];
    return h.time.map(function (_, i) {
      return s && s.max_bytes[i] ? 100 * s.bytes[i] / s.max_bytes[i] : null;
    });
  }
  // Evictions per minute over the last ~10 s of samples, summed over every store.
  function latestEvictionsPerMinute() {
    var h = state.history;
    if (!h || h.time.length < 2) return null;
    var n = h.time.length, j = Math.max(0, n - 1 - Math.max(1, Math.round(10 / (h.interval || 2))));
    var dt = h.time[n - 1] - h.time[j], total = 0;
    if (dt <= 0) return null;
    Object.keys(h.series).forEach(function (label) {
      var e = h.series[label].evictions;
      if (label === "manager/all" || e[n - 1] == null || e[j] == null) return;
      total += Math.max(0, e[n - 1] - e[j]);
    });
    return 60 * total / dt;
  }

  function chartData() {
    var h = state.history;
    var labels = Object.keys(h.series).filter(function (l) { return l !== "manager/all"; });
    var hitLabels = ["manager/all", "cache/memory", "cache/disk"].filter(function (l) { return h.series[l]; });
    var byteLabels = labels.filter(function (l) { var s = h.series[l]; return s.max_bytes.some(function (v) { return v; }); });
    var evLabels = labels.filter(function (l) { return l !== "system_cache/disk"; });
    return {
      hits: { labels: hitLabels, data: [h.time].concat(hitLabels.map(function (l) { return windowedRate(h, l); })), unit: "%" },
      bytes: { labels: byteLabels, data: [h.time].concat(byteLabels.map(function (l) { return usedPct(h, l); })), unit: "%" },
      evictions: { labels: evLabels, data: [h.time].concat(evLabels.map(function (l) { return perMinute(h, l, "evictions"); })), unit: "/min" }
    };
  }

  function makeChart(key, spec, target) {
    var axisColor = cssVar("--muted"), grid = cssVar("--line");
    var series = [{}].concat(spec.labels.map(function (label, i) {
      return {
        label: niceLabel(label), stroke: cssVar(PALETTE[i % PALETTE.length]), width: label === "manager/all" ? 2.5 : 1.6,
        spanGaps: false, points: { show: false },
        value: function (u, v) { return v == null ? "–" : v.toFixed(1) + " " + spec.unit; }
      };
    }));
    var fixed = spec.unit === "%";
    var opts = {
      width: Math.max(240, target.clientWidth), height: 200, series: series, legend: { live: false },
      cursor: { points: { size: 6 } },
      scales: { x: { time: true }, y: fixed ? { range: [0, 100] } : { range: function (u, lo, hi) { return [0, Math.max(1, hi * 1.15)]; } } },
      axes: [
        { stroke: axisColor, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
        { stroke: axisColor, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 52,
          values: function (u, vals) { return vals.map(function (v) { return fixed ? v + "%" : compact(v); }); } }
      ]
    };
    target.replaceChildren();
    state.charts[key] = { plot: new uPlot(opts, spec.data, target), labels: spec.labels.join("|") };
  }

  function drawCharts() {
    var h = state.history;
    if (!h || typeof uPlot === "undefined") return;
    var specs = chartData();
    Object.keys(specs).forEach(function (key) {
      var target = $("chart-" + key), spec = specs[key], have = state.charts[key];
      if (!have || have.labels !== spec.labels.join("|")) makeChart(key, spec, target);
      else have.plot.setData(spec.data);
    });
    var note = "";
    if (h.time.length < 2) {
      note = h.source === "monitor"
        ? "The 6-hour view fills as the manager records a snapshot every " + (h.interval || 60) + " s while it runs."
        : "Collecting samples every " + h.interval + " s…";
    }
    $("chart-note").textContent = note;
  }

  function resize() {
    Object.keys(state.charts).forEach(function (key) {
      var target = $("chart-" + key), c = state.charts[key];
      if (target.clientWidth) c.plot.setSize({ width: target.clientWidth, height: 200 });
    });
  }

  // --- actions ----------------------------------------------------------------------------------------
  function prune(name) {
    if (!window.confirm("Remove model " + name + " from the cache?")) return;
    postJSON("api/actions/prune", { model: name }).then(function () { setStatus("live", "pruned " + name); })
      .catch(function (e) { setStatus("error", "prune failed: " + e.message); });
  }
  $("action-cleanup").addEventListener("click", function () {
    postJSON("api/actions/cleanup", {}).then(function (r) {
      setStatus("live", "cleanup: " + r.report.removed + " removed");
    }).catch(function (e) { setStatus("error", "cleanup failed: " + e.message); });
  });

  function setRange(source) {
    if (state.source === source) return;
    state.source = source;
    state.history = null;
    $("range-recent").className = source === "recent" ? "on" : "";
    $("range-monitor").className = source === "monitor" ? "on" : "";
    getJSON("api/history?source=" + source).then(function (h) { if (state.source === source) { state.history = h; drawCharts(); } })
      .catch(function (e) { setStatus("error", e.message); });
  }
  $("range-recent").addEventListener("click", function () { setRange("recent"); });
  $("range-monitor").addEventListener("click", function () { setRange("monitor"); });

  var resizeTimer = null;
  window.addEventListener("resize", function () { clearTimeout(resizeTimer); resizeTimer = setTimeout(resize, 150); });
  tick();
})();
