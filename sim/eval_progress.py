"""The evaluation's running log of finished chains (``chains.jsonl`` in the output folder).

Each chain's record is appended and flushed as soon as it finishes, so a run that is killed or crashes keeps
what it did; ``dream-policy eval ... resume=true`` then runs only the chains the log lacks. The first line
holds the run's settings: a log written with other settings (another checkpoint, seed, scene ...) is refused
rather than mixed in. A torn last line (the process killed mid-write) is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PROGRESS_FILE = "chains.jsonl"

Record = dict[str, Any]
Finished = dict[int, tuple[Record, str | None]]  # chain index -> (its record, its video or None)


def read_progress(path: Path, settings: Mapping[str, Any], chains: Sequence[tuple[int, Sequence[str]]]) -> Finished:
    """The chains of ``chains`` ((index, tasks) pairs) that the log at ``path`` holds, by index.

    Raises ValueError if the log was written with other ``settings`` or records another task list under
    one of these indices (another chains file); records of chains not asked for now are left out."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or "settings" not in header:
        raise ValueError(f"{path} does not start with the run's settings; it is not an evaluation log "
                         "(delete it, or choose another out_dir)")
    saved = header["settings"]
    if saved != json.loads(json.dumps(dict(settings))):
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise ValueError(f"{path} holds chains run with other settings ({', '.join(changed)}: {saved} now "
                         f"{dict(settings)}); resume only an identical run, or choose another out_dir")
    wanted = {int(index): list(tasks) for index, tasks in chains}
    finished: Finished = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn by a kill mid-write: that chain runs again
            raise ValueError(f"{path}: line {number} is not JSON; the log is damaged") from None
        record = entry["record"]
        index = int(record["index"])
        if index not in wanted:
            continue
        if list(record["tasks"]) != wanted[index]:
            raise ValueError(f"{path}: chain {index} was run with tasks {record['tasks']}, not {wanted[index]}; "
                             "the log belongs to other chains (another chains_file)")
        finished[index] = (record, entry.get("video"))
    return finished


def open_progress(path: Path, settings: Mapping[str, Any], resume: bool) -> IO[str]:
    """The log opened for appending; a new one (the settings line first) unless ``resume``
    continues an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if resume and path.is_file() and path.stat().st_size > 0:
        log = path.open("r+", encoding="utf-8")
        text = log.read()
        if not text.endswith("\n"):  # a torn last line: cut it so the next record starts a line
            log.seek(0)
            log.truncate(text.rfind("\n") + 1)
        log.seek(0, 2)
        return log
    log = path.open("w", encoding="utf-8")
    log.write(json.dumps({"settings": dict(settings)}) + "\n")
    log.flush()
    return log


def append_record(log: IO[str], record: Record, video: str | None) -> None:
    """One finished chain, written through at once."""
    log.write(json.dumps({"record": record, "video": video}) + "\n")
    log.flush()
