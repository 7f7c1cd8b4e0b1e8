/* visual_reco feedback: impressions (half an item in view for one continuous second) and
   clicks of the lists the {% visually_similar %} tag renders, sent to its events endpoint in
   batches. No dependencies; one instance per page however often it is included.
   window.visualReco.track("favorite" | "dismiss", element) reports the shop's own buttons. */
(function (w, d) {
  "use strict";
  var nav = navigator;
  if (w.visualReco) {
    w.visualReco.scan();
    return;
  }
  var off = function () {};
  // The server serves no token then already; this covers a cached page or a changed setting.
  if (nav.globalPrivacyControl === true || nav.doNotTrack === "1" || w.doNotTrack === "1") {
    w.visualReco = {scan: off, track: off, flush: off};
    return;
  }
  var SECTION = "section.visual-reco[data-vr-token]", ITEM = "li.visual-reco__item";
  var MAX_EVENTS = 100, MAX_BYTES = 60000, DELAY = 3000, QUEUE_MAX = 1000, DWELL = 1000;
  var queue = [], timer = 0, watched = [];
  var io = w.IntersectionObserver && new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      var li = entry.target;
      if (entry.isIntersecting && entry.intersectionRatio >= 0.499 && !d.hidden) {
        li._vrTimer = li._vrTimer || setTimeout(function () {
          li._vrTimer = 0;
          li._vrSeen = 1;
          io.unobserve(li);
          record("impression", li);
        }, DWELL);
      } else {
        stop(li);
      }
    });
  }, {threshold: 0.5});

  function stop(li) {
    clearTimeout(li._vrTimer);
    li._vrTimer = 0;
  }

  function uid() {
    var c = w.crypto, bytes = new Uint8Array(16), out = "", i;
    if (c && c.randomUUID) return c.randomUUID();
    if (c && c.getRandomValues) c.getRandomValues(bytes);
    else for (i = 0; i < 16; i++) bytes[i] = Math.random() * 256;
    for (i = 0; i < 16; i++) out += (bytes[i] + 256).toString(16).slice(1);
    return out;
  }

  function hasCookie(name) {
    return d.cookie.split(/;\s*/).some(function (c) { return c.indexOf(name + "=") === 0; });
  }

  function record(type, el) {
    var li = el && el.closest(ITEM), section = li && li.closest(SECTION);
    if (!section || !li.dataset.pk || queue.length >= QUEUE_MAX) return;
    var data = section.dataset;
    queue.push([data.vrEvents, JSON.stringify({
      type: type, event_id: uid(), token: data.vrToken, product: li.dataset.pk,
      position: +li.dataset.position, ts: Date.now()})]);
    timer = timer || setTimeout(flush, DELAY);
  }

  function send(url, events) {
    var body = '{"events":[' + events.join(",") + "]}";
    try {
      if (nav.sendBeacon(url, new Blob([body], {type: "application/json"}))) return;
    } catch (e) { /* no sendBeacon, or it refused: fetch below */ }
    if (w.fetch) {
      fetch(url, {method: "POST", body: body, keepalive: true, credentials: "same-origin",
                  headers: {"Content-Type": "application/json"}}).catch(off);
    }
  }

  function flush() {
    clearTimeout(timer);
    timer = 0;
    var byUrl = {};
    queue.splice(0).forEach(function (q) { (byUrl[q[0]] = byUrl[q[0]] || []).push(q[1]); });
    Object.keys(byUrl).forEach(function (url) {
      var batch = [], size = 20;
      byUrl[url].forEach(function (json) {
        var bytes = new Blob([json]).size + 1;
        if (batch.length >= MAX_EVENTS || (batch.length && size + bytes > MAX_BYTES)) {
          send(url, batch);
          batch = [];
          size = 20;
        }
        batch.push(json);
        size += bytes;
      });
      if (batch.length) send(url, batch);
    });
  }

  function onClick(event) {
    if (event.type === "auxclick" && event.button !== 1) return;
    var link = event.target.closest && event.target.closest("a[href]");
    if (link && link.closest(ITEM) && this.contains(link)) {
      record("click", link);
      flush();  // before the browser leaves the page
    }
  }

  function scan() {
    d.querySelectorAll(SECTION).forEach(function (section) {
      if (section._vr) return;
      section._vr = 1;
      var data = section.dataset;
      if (data.vrCookie && data.vrVisitor && !hasCookie(data.vrCookie)) {
        d.cookie = data.vrCookie + "=" + encodeURIComponent(data.vrVisitor) +
          "; path=/; max-age=31536000; SameSite=Lax" +
          (location.protocol === "https:" ? "; Secure" : "");
      }
      section.addEventListener("click", onClick, true);
      section.addEventListener("auxclick", onClick, true);
      if (io) {
        section.querySelectorAll(ITEM + "[data-pk][data-position]").forEach(function (li) {
          watched.push(li);
          io.observe(li);
        });
      }
    });
  }

  d.addEventListener("visibilitychange", function () {
    if (d.hidden) {
      watched.forEach(stop);  // a hidden tab's seconds are no view
      flush();
    } else if (io) {
      // Observing again reports what is in view now, which starts the dwell anew.
      watched.forEach(function (li) {
        if (!li._vrSeen) {
          io.unobserve(li);
          io.observe(li);
        }
      });
    }
  });
  w.addEventListener("pagehide", flush);
  w.visualReco = {scan: scan, flush: flush, track: function (type, el) {
    // Only these: the server refuses a whole batch with any other type in it.
    if (type === "favorite" || type === "dismiss") record(type, el);
  }};
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", scan);
  else scan();
})(window, document);
