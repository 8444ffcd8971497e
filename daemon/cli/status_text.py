"""The words of `genretagger status`: the plain-text report the station's IT volunteer
reads, made from the dict `daemon.service.status.collect_status` gathers (the same one
`status --json` prints)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from daemon.core.paths import display_stored
from daemon.learn.report import cannot_suggest_lines, served_lines
from daemon.service.status import NOT_SONGS_SHOWN
from daemon.service.storage import storage_lines

NOT_SONGS_SHOWN_TEXT = 20


def _worker_lines(workers: list[dict[str, Any]]) -> list[str]:
    """One line per worker: where, what, how fresh, how fast."""
    if not workers:
        return []
    alive = sum(1 for w in workers if w["alive"])
    lines = [f"workers:     {alive} alive of {len(workers)}"]
    for w in workers:
        state = ("alive" if w["alive"] else
                 f"stopped {_local(w['stopped_at'])}" if w["stopped_at"] else "DEAD")
        name = f" {w['name']}" if w.get("name") else ""
        lines.append(f"  {w['host']}:{w['pid']} {w['role']}{name}: {state}, heartbeat "
                     f"{w['heartbeat_age']:.0f} s ago, {w['files_done']} files, "
                     f"{w['files_per_minute']:g} files/min"
                     + (f", genre map v{w['genre_map']}" if w.get("genre_map") else ""))
    return lines


def _local(iso: str | None) -> str:
    """An ISO time as the server's local 'YYYY-MM-DD HH:MM' (what the volunteer reads)."""
    if not iso:
        return "never"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")


def _daemon_line(d: dict[str, Any], storage: dict[str, Any] | None = None) -> str:
    if d["running"] and not d.get("publishing", True):
        why = (storage or {}).get("condition") or "see `journalctl -u genretagger`"
        return (f"daemon:      running (pid {d['pid']}), but it cannot publish its heartbeat "
                f"or health: {why}")
    if d["running"]:
        return f"daemon:      running (pid {d['pid']}, since {_local(d['started_at'])})"
    if d["stopped_at"]:
        return f"daemon:      stopped at {_local(d['stopped_at'])}"
    if d["heartbeat"]:
        return (f"daemon:      NOT RUNNING (last heartbeat {_local(d['heartbeat'])}; "
                "did it crash? see `journalctl -u genretagger`)")
    return "daemon:      never started (start it: `systemctl start genretagger`)"


def _leader_lines(leader: dict | None, running: bool) -> list[str]:
    if not leader:
        return []
    where = f"{leader.get('host')} pid {leader.get('pid')}"
    if leader.get("stopped_at"):
        return [f"leader:      none (the last, {where}, stopped at "
                f"{_local(leader['stopped_at'])})"]
    return [f"leader:      {where}, since {_local(leader.get('since'))}"
            + ("" if running else " (NOT RUNNING: a standby takes over, if there is one)")]


def _component_lines(components: dict[str, dict]) -> list[str]:
    if not components:
        return []
    sick = {n: c for n, c in components.items() if not c.get("healthy")}
    failing = {n: c for n, c in components.items() if c.get("failing")}
    if not sick and not failing:
        return [f"components:  all {len(components)} healthy"]
    lines = [f"components:  {len(components) - len(sick)} of {len(components)} healthy"
             + ("" if not sick else " (NOT HEALTHY: " + ", ".join(sick) + ")")]
    for name, c in {**failing, **sick}.items():
        state = "failing" if c.get("healthy") else "NOT HEALTHY"
        error = (f": {c['last_error']} (at {_local(c.get('last_error_at'))})"
                 if c.get("last_error") else "")
        lines.append(f"  {name}: {state}{error}")
    return lines


def _listed(total: int, shown: list[str], more: str) -> list[str]:
    """The shown entries, indented, and how many more there are."""
    lines = [f"  {entry}" for entry in shown]
    if total > len(shown):
        lines.append(f"  ... and {total - len(shown)} more{more}")
    return lines


def _model_line(model: dict | None) -> str:
    if model is None:
        return "model:       none yet (the daemon trains the first one from tagged songs)"
    figures = []
    if model["accuracy"] is not None:
        figures.append(f"accuracy {model['accuracy']:.0%}")
    if model["macro_f1"] is not None:
        figures.append(f"macro-F1 {model['macro_f1']:.2f}")
    return (f"model:       v{model['version']}, {len(model['classes'])} genres, "
            f"{model['n_songs']} songs" + (f", {', '.join(figures)}" if figures else "")
            + f", active since {_local(model['activated_at'])}")


def _walk_line(rec: dict | None) -> str:
    if rec is None:
        return "last walk:   never"
    counts = ", ".join(f"{v} {k}" for k, v in rec.items()
                       if isinstance(v, int) and not isinstance(v, bool) and v)
    text = f"last walk:   {_local(rec.get('at'))}" + (f" ({counts})" if counts else "")
    if rec.get("guarded"):
        text += f"; GUARDED, nothing marked missing: {rec.get('reason')}"
    return text


def _retrain_line(retrain: dict[str, Any]) -> str:
    last = retrain["last"]
    last_text = ("never" if last is None else
                 f"{last['trigger']} {last['status']} {_local(last['started_at'])}"
                 + (f" ({last['reason']})" if last["reason"] else ""))
    next_text = _local(retrain["next"]) if retrain["enabled"] else "disabled in config"
    return f"retraining:  last {last_text}; next {next_text}"


def render_status(data: dict[str, Any]) -> str:
    """The short plain-text report for the station's IT volunteer."""
    d = data["daemon"]
    storage = data.get("storage") or {}
    lines = [_daemon_line(d, storage), *_leader_lines(data.get("leader"), d["running"]),
             *_component_lines(data.get("components") or {}),
             f"database:    {data['database']}",
             *storage_lines(storage, data.get("library") or {})]
    states = data["tracks"]["by_state"]
    shown = ", ".join(f"{n} {s}" for s, n in states.items() if n)
    lines.append(f"tracks:      {data['tracks']['total']}" + (f" ({shown})" if shown else ""))
    lines.append(f"queue:       {data['queue_depth']} waiting, "
                 f"{data['files_per_minute']:g} files/min over the last hour"
                 + (f", last file {d['last_file']}" if d["last_file"] else ""))
    lines.append(f"review:      {data['pending_suggestions']} suggestions to review, "
                 f"{data['decisions_waiting']} accepted genres waiting to be written")
    if data.get("mixed_albums"):
        lines.append(f"albums:      {data['mixed_albums']} album(s) whose tagged songs carry "
                     "different genres (`genretagger review album mixed`)")
    if data["write_failures_total"]:
        lines.append(f"not written: {data['write_failures_total']} accepted genre(s) could not "
                     "be written into the file yet (retried later):")
        lines += _listed(data["write_failures_total"],
                         [f"{w['path']}: {w['reason']}" for w in data["write_failures"]],
                         " (`status --json` lists 20)")
    lines += [_model_line(data["model"]), _walk_line(data["last_reconcile"]),
              _retrain_line(data["retraining"])]
    lines += _worker_lines(data.get("workers") or [])
    if data.get("cannot_suggest_yet"):
        lines.append("cannot suggest yet (too few confirmed or tagged songs):")
        lines += cannot_suggest_lines(data["cannot_suggest_yet"])
    lines += served_lines(None, data.get("not_tested") or {})
    if data["quarantined_total"]:
        lines.append(f"quarantined: {data['quarantined_total']} file(s) that cannot be "
                     "classified (retried when the file changes):")
        lines += _listed(data["quarantined_total"],
                         [f"{display_stored(q['path'])}: {q['reason']}"
                          for q in data["quarantined"]], " (`status --json` lists 20)")
    if data.get("not_songs_total"):
        lines.append(f"not songs:   {data['not_songs_total']} file(s) kept out of the queue "
                     "and of training:")
        lines += _listed(data["not_songs_total"],
                         [f"{display_stored(n['path'])}: {n['reason']}"
                          for n in data["not_songs"][:NOT_SONGS_SHOWN_TEXT]],
                         f" (`status --json` lists {NOT_SONGS_SHOWN})")
    if data["skipped_total"]:
        lines.append(f"skipped:     {data['skipped_total']} name(s) that look like songs but "
                     "are not read:")
        lines += _listed(data["skipped_total"],
                         [f"{e['path']}: {e['reason']}" for e in data["skipped"]], "")
    return "\n".join(lines)
