"""What differs between two job fingerprints, said exactly: a refusal names the inputs removed,
added or changed by name and only the options that changed, by their flags."""

from __future__ import annotations

__all__ = ["FIELDS", "OPTION_FLAGS", "changed_fields"]

FIELDS = {
    "inputs": "inputs",
    "model": "model (--model, --dtype)",
    "prompt": "prompt",
    "options": "options",
    "splits": "splits",
    "version": "berta-jax format version",
}


OPTION_FLAGS = {
    "text_field": "--text-field/--text-column",
    "id_field": "--id-field/--id-column",
    "precision": "--precision",
    "truncate_dim": "--truncate-dim",
    "split_bytes": "--split-size",
    "on_error": "--on-error",
    "max_batch_tokens": "--max-batch-tokens",
    "batch_size": "--batch-size",
    "kind": "the output's kind (file or dataset)",
}


def changed_fields(recorded: dict, expected: dict) -> list[str]:
    """Exactly what differs between two fingerprints: the inputs removed, added or changed by name,
    the options that changed by flag, and the splits only when the split size changed (other inputs
    alone plan other splits)."""
    changed = []
    for key in FIELDS:
        was, now = recorded.get(key), expected.get(key)
        if was == now:
            continue
        if key == "inputs":
            changed.append(_inputs_changed(was, now))
        elif key == "options":
            changed.append(_options_changed(was, now))
        elif key == "model":
            changed.append(_model_changed(was, now))
        elif key != "splits":
            changed.append(FIELDS[key])
        elif recorded.get("inputs") == expected.get("inputs") and _option(
            recorded, "split_bytes"
        ) == _option(expected, "split_bytes"):
            changed.append("splits")  # the same inputs and size planned otherwise
    return [c for c in changed if c]


def _option(fingerprint: dict, name: str):
    options = fingerprint.get("options")
    return options.get(name) if isinstance(options, dict) else None


def _urls(inputs) -> dict:
    if not isinstance(inputs, list):
        return {}
    return {i.get("url"): i for i in inputs if isinstance(i, dict)}


def _inputs_changed(was, now) -> str:
    before, after = _urls(was), _urls(now)
    what = [f"{u} removed" for u in before if u not in after]
    what += [f"{u} added" for u in after if u not in before]
    what += [f"{u} changed" for u in after if u in before and before[u] != after[u]]
    return f"inputs ({', '.join(what) or 'their order'})"


def _options_changed(was, now) -> str:
    was, now = (x if isinstance(x, dict) else {} for x in (was, now))
    keys = sorted(set(was) | set(now))
    names = [OPTION_FLAGS.get(k, k) for k in keys if was.get(k) != now.get(k)]
    return f"options ({', '.join(names)})" if names else "options"


def _model_changed(was, now) -> str:
    was, now = (x if isinstance(x, dict) else {} for x in (was, now))
    if {k: v for k, v in was.items() if k != "dtype"} == {
        k: v for k, v in now.items() if k != "dtype"
    }:
        return "compute dtype (--dtype)"
    return "model (--model)" if was.get("dtype") == now.get("dtype") else FIELDS["model"]
