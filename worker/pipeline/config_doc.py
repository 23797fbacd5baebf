"""``docs/CONFIGURATION.md``, written from the setting declarations of :mod:`worker.pipeline.config`.

``python -m worker.pipeline.config_doc > docs/CONFIGURATION.md`` rewrites it; a test fails when the
committed file and the declarations disagree.
"""

from __future__ import annotations

import sys

from .config import OPTIONS, default_text


def markdown() -> str:
    """The text of docs/CONFIGURATION.md, made from the declarations above."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Worker configuration",
        "",
        "<!-- Generated from worker/pipeline/config.py by `python -m worker.pipeline.config_doc > "
        "docs/CONFIGURATION.md`; a test fails when they disagree. Edit the declarations, not this file. -->",
        "",
        "`invad work` reads each setting from its flag, else its variable, else the default. Every value is",
        "checked at start: a bad one stops the worker with exit code 2 and a message naming the flag or",
        "variable, the value and what is allowed. The settings are logged once at start as the `config`",
        "event, with secrets masked; every later log line has credentials masked too (URL userinfo such as",
        "`redis://user:***@host`, query parameters such as `?password=***` or `&X-Amz-Signature=***`, and",
        "the values of secret settings wherever they appear).",
        "",
        "Secrets (marked below) have no flag, since a flag is visible to every user of the machine in the",
        "process list; `INVAD_REDIS_URL` has one for password-less servers, but give a password through",
        "the variable. Embedded mode (`--source`, `--sqlite`, `--out`, `--product`, `--line-id`,",
        "`--progress`) is described by `invad work --help`.",
        "",
        "| Variable | Flag | Default | Allowed | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for option in OPTIONS:
        variables = " or ".join(f"`{name}`" for name in option.env)
        flag = f"`{option.flag}`" if option.flag else "-"
        default = default_text(option)
        meaning = option.help + (" **(secret)**" if option.secret else "")
        lines.append(f"| {variables} | {flag} | {cell(f'`{default}`' if default else '-')} | "
                     f"{cell(option.rule.allowed)} | {cell(meaning)} |")
    return "\n".join(lines) + "\n"



if __name__ == "__main__":
    sys.stdout.write(markdown())
