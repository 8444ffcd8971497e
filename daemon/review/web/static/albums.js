// Keyboard on the "By album" page: j/k move between albums, a accept the most suggested
// genre for the agreeing songs, A for the whole album (both open the confirm step), u undo
// the last album action, p play / pause the album's first song. URLs come from the page.
"use strict";

(function () {
  const token = () => document.querySelector('meta[name="csrf-token"]').content;
  let current = -1;

  function albums() { return Array.from(document.querySelectorAll("article.album")); }

  // scroll: only for j/k; on load and on a tap the page stays put (a phone opens at the top).
  function select(index, scroll) {
    const rows = albums();
    if (!rows.length) { current = -1; return; }
    current = Math.max(0, Math.min(index, rows.length - 1));
    rows.forEach((row, i) => row.classList.toggle("current", i === current));
    if (scroll) rows[current].scrollIntoView({ block: "nearest" });
    rows[current].focus({ preventScroll: true });
  }

  const say = (message, isError) => window.genretagger.say(message, isError);

  async function undoLast() {
    const url = document.getElementById("albums").dataset.undoUrl;
    const response = await fetch(url, {
      method: "POST", body: new FormData(), credentials: "same-origin",
      headers: { "X-CSRFToken": token(), "Accept": "application/json" },
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = { error: "unexpected answer" }; }
    if (!response.ok || !data.ok) { say(data.error || response.statusText, true); return; }
    say(data.message);
    window.location.reload();
  }

  document.addEventListener("keydown", (event) => {
    if (!document.getElementById("albums")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const tag = (event.target.tagName || "").toLowerCase();
    if (["input", "select", "textarea"].includes(tag)) return;
    const row = current >= 0 ? albums()[current] : null;
    const key = event.key;
    if (key === "j") { select(current + 1, true); }
    else if (key === "k") { select(current - 1, true); }
    else if (key === "u") { undoLast(); }
    else if (row && key === "a") { window.location.assign(row.dataset.agreeingUrl); }
    else if (row && key === "A") { window.location.assign(row.dataset.allUrl); }
    else if (row && key === "p") {
      const link = row.querySelector("a.play-alike");
      if (link) link.click();
    } else { return; }
    event.preventDefault();
    event.stopImmediatePropagation();
  }, true);

  document.addEventListener("click", (event) => {
    const row = event.target.closest && event.target.closest("article.album");
    if (row) select(albums().indexOf(row));
  });

  document.addEventListener("DOMContentLoaded", () => select(0, false));
})();
