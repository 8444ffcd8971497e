// Keyboard review: j/k move, 1-3 accept that genre, a accept the top one, r none of
// these, n not a song, u undo, p play/pause. Every action is the row's own form, sent with fetch so
// the page stays put; without this script the forms work as plain posts. URLs come from
// the page (form actions, data-*-url attributes rendered with url_for), never written here.
"use strict";

(function () {
  const token = () => document.querySelector('meta[name="csrf-token"]').content;
  let rows = [];
  let current = -1;

  // The result of an action shows in one fixed place at the foot of the screen (the
  // status toast), so it is seen on a phone however far down the director tapped; an
  // undoable action gets its Undo button there. A message said just before a reload is
  // kept for the reloaded page.
  const SAID = "genretagger-said";

  function say(message, isError, undoable) {
    const status = document.getElementById("status");
    if (!status) return;
    status.querySelector(".said").textContent = message;
    status.querySelector("button.undo-last").classList.toggle("hidden", !undoable);
    status.classList.remove("hidden");
    status.classList.toggle("error", Boolean(isError));
  }

  function sayAfterReload(message) {
    try { window.sessionStorage.setItem(SAID, message); } catch (e) { /* private mode */ }
    window.location.reload();
  }

  window.genretagger = { say: say, sayAfterReload: sayAfterReload };
  // A reload (after an undo) opens at the top like a fresh visit, where the page's own
  // messages are, rather than where the director had scrolled.
  if ("scrollRestoration" in window.history) window.history.scrollRestoration = "manual";

  // scroll: bring the row into view (j/k); on load and after a tap the page stays where
  // it is, so a phone opens at the top of the page.
  function select(index, scroll) {
    rows = Array.from(document.querySelectorAll("article.song"));
    if (!rows.length) { current = -1; return; }
    current = Math.max(0, Math.min(index, rows.length - 1));
    rows.forEach((row, i) => row.classList.toggle("current", i === current));
    if (scroll) rows[current].scrollIntoView({ block: "nearest" });
    rows[current].focus({ preventScroll: true });
  }

  async function post(url, form) {
    const response = await fetch(url, {
      method: "POST",
      body: form || new FormData(),
      headers: { "X-CSRFToken": token(), "Accept": "application/json" },
      credentials: "same-origin",
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = { error: "unexpected answer" }; }
    if (!response.ok || !data.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  // byKey: the next song is brought into view (a tap leaves the page where it is).
  async function submitRowForm(form, byKey) {
    const row = form.closest("article.song");
    try {
      const data = await post(form.action, new FormData(form));
      const index = rows.indexOf(row);
      row.remove();
      const total = document.getElementById("total");
      if (total) total.textContent = String(Math.max(0, Number(total.textContent) - 1));
      if (!document.querySelector("article.song")) { sayAfterReload(data.message); return; }
      say(data.message, false, true);
      select(index, byKey);
    } catch (err) {
      say(err.message, true);
    }
  }

  async function undoLast() {
    try {
      const data = await post(document.body.dataset.undoLastUrl);
      sayAfterReload(data.message);
    } catch (err) {
      say(err.message, true);
    }
  }

  function currentRow() { return current >= 0 ? rows[current] : null; }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.classList.contains("act") && form.closest("article.song")) {
      event.preventDefault();
      select(rows.indexOf(form.closest("article.song")));
      submitRowForm(form);
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const tag = (event.target.tagName || "").toLowerCase();
    if (["input", "select", "textarea"].includes(tag)) return;
    const row = currentRow();
    const key = event.key;
    if (key === "j") { select(current + 1, true); }
    else if (key === "k") { select(current - 1, true); }
    else if (key === "u") { undoLast(); }
    else if (row && ["1", "2", "3", "a"].includes(key)) {
      const choice = key === "a" ? "1" : key;
      const button = row.querySelector(`button.choice[data-choice="${choice}"]`);
      if (button) submitRowForm(button.closest("form"), true);
    } else if (row && key === "r") {
      submitRowForm(row.querySelector("button.reject").closest("form"), true);
    } else if (row && key === "n") {
      submitRowForm(row.querySelector("button.not-song").closest("form"), true);
    } else if (row && key === "p") {
      const audio = row.querySelector(".listen audio");
      if (audio.paused) {
        document.querySelectorAll("audio").forEach((a) => { if (a !== audio) a.pause(); });
        audio.play().catch(() => say("This song cannot be played here.", true));
      } else { audio.pause(); }
    } else { return; }
    event.preventDefault();
  });

  document.addEventListener("click", (event) => {
    if (event.target.closest && event.target.closest("#status button.undo-last")) {
      undoLast();
      return;
    }
    if (event.target.closest && event.target.closest("#status button.close")) {
      document.getElementById("status").classList.add("hidden");
      return;
    }
    const row = event.target.closest && event.target.closest("article.song");
    if (row) { rows = Array.from(document.querySelectorAll("article.song")); select(rows.indexOf(row)); }
  });

  // "Sounds like": a link plays that song's preview in the page's one player (a second
  // click pauses it); every other player stops first.
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a.play-alike");
    const player = document.getElementById("alike-player");
    if (!link || !player) return;
    event.preventDefault();
    const same = player.getAttribute("src") === link.getAttribute("href");
    document.querySelectorAll("audio").forEach((a) => a.pause());
    document.querySelectorAll("a.play-alike").forEach((a) => showPlaying(a, false));
    if (same && player.dataset.playing === "yes") { player.dataset.playing = "no"; return; }
    if (!same) player.setAttribute("src", link.getAttribute("href"));
    player.dataset.playing = "yes";
    showPlaying(link, true);
    player.play().catch(() => say("This song cannot be played here.", true));
  });
  document.addEventListener("DOMContentLoaded", () => {
    const player = document.getElementById("alike-player");
    if (player) {
      player.addEventListener("ended", () => {
        player.dataset.playing = "no";
        document.querySelectorAll("a.play-alike").forEach((a) => showPlaying(a, false));
      });
    }
  });

  // A play link's text and its name for screen readers ("Play Blue Porch by Delta Ray").
  function showPlaying(link, playing) {
    link.textContent = playing ? "❚❚ Pause" : "▶ Play";
    if (link.dataset.name) link.setAttribute("aria-label", (playing ? "Pause " : "Play ") + link.dataset.name);
  }

  document.addEventListener("DOMContentLoaded", () => {
    select(0, false);
    let said = null;
    try {
      said = window.sessionStorage.getItem(SAID);
      window.sessionStorage.removeItem(SAID);
    } catch (e) { /* private mode */ }
    if (said) say(said);
  });
})();
