"""Generate workflows/*.json (ComfyUI's UI format, for drag-in and the template browser). Dev tool.

The workflows are described by name in scripts/workflow_flows.py; scripts/workflow_compiler.py orders the
widget values by ComfyUI's own node definitions, so this script boots ComfyUI in-process with the pack:

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py          # write workflows/
    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py --check  # exit 1 if any file is stale

The tests rebuild every workflow and compare it with the file (tests/integration/test_workflows.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / "workflows"
sys.path.append(str(REPO))  # headless.runtime (last: the repo's `nodes` must not shadow ComfyUI's)

from workflow_compiler import workflow_text  # noqa: E402
from workflow_flows import all_flows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with workflows/ instead of writing")
    args = parser.parse_args(argv)
    if not os.environ.get("COMFYUI_PATH"):
        parser.error("set COMFYUI_PATH to a ComfyUI checkout (node definitions come from ComfyUI itself)")
    from headless.runtime import start

    logging.disable(logging.WARNING)  # ComfyUI's start-up chatter (optional nodes it cannot import)
    start(os.environ["COMFYUI_PATH"], ("--cpu",), user_model_paths=False)
    logging.disable(logging.NOTSET)

    flows = all_flows()
    stale = []
    for flow in flows:
        text = workflow_text(flow)
        path = WORKFLOWS_DIR / f"{flow.name}.json"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            WORKFLOWS_DIR.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    extra = sorted({p.stem for p in WORKFLOWS_DIR.glob("*.json")} - {f.name for f in flows})
    if extra:
        print(f"not described in scripts/workflow_flows.py (delete or describe them): {', '.join(extra)}",
              file=sys.stderr)
    if stale:
        print(f"stale (run scripts/build_workflows.py): {', '.join(stale)}", file=sys.stderr)
    if stale or extra:
        return 1
    if args.check:
        print(f"{len(flows)} workflows up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
